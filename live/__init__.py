"""Real time: the emulator, the gateway, the load generator and ``python -m live``.

- ``live.client``: async client for vLLM-compatible servers (streamed completions
  timed like ``vllm bench serve``, ``/metrics`` scrapes, health, models); with
  ``live.prometheus``, the parser of vLLM's metric text.
- ``live.emulator``: a vLLM-compatible stand-in serving the simulator's engine
  model on the wall clock (``python -m live.emulator``).
- ``live.gateway``: the OpenAI-compatible routing gateway (``python -m live.gateway``).
- ``live.fleet``: ``routing.Router`` plus scrapes and health, shared by the gateway
  and the load generator.
- ``live.loadgen``: trace replay with exact arrival times, one record per request
  (over ``live.streamclient``).
- ``live.run`` / ``python -m live SCENARIO``: a scenario live, written as a run directory.
- ``live.http``: the small HTTP/1.1 layer both servers share; ``live.processes``:
  child servers that announce their URL and never outlive the parent.
"""
