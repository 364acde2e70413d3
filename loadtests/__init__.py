"""Load tests and benchmarks for the ranking service.

`loadtests.runner` (``adrank loadtest``) drives locust headless in a child process against a running
server and checks the result against latency budgets; `loadtests.bench` (``adrank bench``) measures
each serving cost as a ratio against a baseline taken in the same run.

Importing this package never imports locust: locust patches threading through gevent, which hangs a
gRPC server or client in the same process. Only `loadtests/locustfile.py` imports it, and it runs in
its own process.
"""
