"""What the tests share: import helpers from here, never from a conftest.py (those hold only fixtures and hooks).

- ``paths``: REPO_ROOT.                       - ``images``: photo(), black_png(), normal_photo(), dark_tiny().
- ``clock``: FakeClock, the one fake clock.   - ``waits``: wait_for(), async_wait_for(), settle().
- ``net``: free_port(), listening_socket().   - ``metrics``: metric_value(), metrics_text(), registry_value().
- ``model``: tiny_settings(), tiny_blip(), shared_tiny_model(), fake_model(), MODEL_NAME.
- ``servers``: LiveServer (+ ``LiveServer.keyed``), AppServer, replicas(), API_KEY.
- ``processes``: ServerProcess, rss_bytes(), model_child_pid().     - ``faulty_serve``: a serve with a CUDA fault.
- ``redis``: RedisServer, unreachable_redis_url().   - ``nginx``: Nginx.   - ``receiver``: Receiver (webhooks).
- ``fakes``: GatedModel, FakeCaptioner, FakeNvml.    - ``service``: the caption service driven directly.
- ``jobs``: submit_job(), job_result().  - ``drift``: FAST, send().  - ``deploy``: compose(), k8s().
- ``client``: Blocking, Connect, sha256().   - ``registry``: cli(), Load, confident_copy(), gate_set_from().
- ``unit_guard``: what tests/unit/conftest.py uses to keep the unit tier free of processes, sockets and models.
"""
