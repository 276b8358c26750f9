"""Real time: emulator, gateway, load generator, validation (in progress)."""
