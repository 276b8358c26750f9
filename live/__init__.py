"""Real time: the emulator, the gateway, the load generator and ``python -m live``.

The products:

- ``live.emulator``: a vLLM-compatible stand-in serving the simulator's engine
  model on the wall clock (``python -m live.emulator``).
- ``live.gateway``: the OpenAI-compatible routing gateway (``python -m live.gateway``).
- ``live.router``: ``routing.Router`` plus scrapes and health, shared by the gateway
  and the load generator.
- ``live.loadgen``: trace replay with exact arrival times, one record per request.
- ``live.run`` / ``python -m live SCENARIO``: a scenario live, written as a run directory.

Their plumbing, in ``live.transport``: the HTTP/1.1 server and upstream pool both
servers share (``http``), the load generator's streaming client (``streamclient``),
the aiohttp client ``calibrate`` uses (``client``), the parser of vLLM's metric
text (``prometheus``), and child servers that announce their URL and never
outlive the parent (``processes``).

Validating a simulator run live is the ``validation`` package's job
(``python -m live --validate`` hands over to ``python -m validation``).
"""
