"""The mutants of docs/testing.md: apply each one-line change, run the tests that must catch it, restore it.

    python tests/mutants.py            # all (about 6 minutes on 2 cores: three need a live server)
    python tests/mutants.py 0 6 7      # some, by index

Each mutant's file is restored with ``git checkout`` afterwards: run it on a clean work tree. Exits 1 if any
mutant survived.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
PY = sys.executable
# (what it breaks, file, the text replaced, its replacement, the pytest arguments that must fail)
MUTANTS = [
    ("cache key: num_captions missing", "captioner/serving/service.py",
     'generation = {**self._generation, "num_captions": num_captions}', 'generation = dict(self._generation)',
     ["tests/unit/serving/test_cache.py"]),
    ("flush size: > for >=", "captioner/serving/batcher.py",
     "return queued >= max_batch_size or", "return queued > max_batch_size or",
     ["tests/unit/serving/test_batcher.py"]),
    ("SSRF spelling: malformed numeric host goes to DNS", "captioner/outbound/policy.py",
     'if _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):', "if False:",
     ["tests/integration/outbound/test_urlfetch.py"]),
    ("SSRF spelling: inet_aton shorthand not normalised", "captioner/outbound/policy.py",
     "return socket.inet_ntoa(socket.inet_aton(name))", "return None",
     ["tests/integration/outbound/test_urlfetch.py"]),
    ("IPv4-mapped IPv6 not unwrapped", "captioner/outbound/policy.py",
     "embedded = addr.ipv4_mapped or addr.sixtofour or nat64", "embedded = addr.sixtofour or nat64",
     ["tests/integration/outbound/test_urlfetch.py"]),
    ("only the first resolved address checked", "captioner/outbound/policy.py",
     "for address in addresses:\n        try:\n            check_address(",
     "for address in addresses[:1]:\n        try:\n            check_address(",
     ["tests/integration/outbound/test_urlfetch.py"]),
    ("key comparison stops at the first match", "captioner/guard/api_keys.py",
     "matched |= hmac.compare_digest(presented, digest)", "matched = matched or hmac.compare_digest(presented, digest)",
     ["tests/unit/guard/test_api_keys.py"]),
    ("any key accepted", "captioner/guard/api_keys.py",
     "        if not matched:\n", "        if False:\n",
     ["tests/unit/guard/test_api_keys.py"]),
    ("disconnect no longer drops the request", "captioner/http/caption_api.py",
     "            pass\n        task.cancel()", "            pass\n        pass",
     ["tests/integration/guard/test_gate.py", "-k", "disconnect"]),
    ("one rate-limit bucket for every key", "captioner/guard/api_guard.py",
     "await self.limiter.check(principal)", 'await self.limiter.check("everyone")',
     ["tests/integration/guard/test_gate.py", "-k", "rate_limit"]),
    ("SIGHUP reload applies the whole new config", "captioner/runtime/state.py",
     "applied = self.settings.with_models_of(wanted)", "applied = wanted",
     ["tests/unit/runtime/test_lifespan.py"]),
    ("a drain budget per stage", "captioner/runtime/lifespan.py",
     "await runtime.pool.close(runtime.drain_left_s())", "await runtime.pool.close(settings.server.drain_timeout_s)",
     ["tests/unit/http/test_lifespan.py"]),
    ("an unknown JSON field ignored", "captioner/http/inputs.py",
     '    _refuse_unknown(payload, "field")', "    pass",
     ["tests/unit/http/test_schemathesis.py", "-k", "caption and negative"]),
    ("no expedite on SIGTERM", "captioner/runtime/state.py",
     "self.loop.call_soon_threadsafe(self.pool.expedite)", "pass",
     ["tests/system/test_drain.py", "-k", "answers_everything"]),
]  # fmt: skip


def main(only: list[str]) -> int:
    survived = 0
    for index, (name, path, old, new, tests) in enumerate(MUTANTS):
        if only and str(index) not in only:
            continue
        file = Path(ROOT, path)
        text = file.read_text()
        assert text.count(old) == 1, f"{name}: the line to mutate is not in {path} exactly once"
        file.write_text(text.replace(old, new))
        try:
            result = subprocess.run(
                [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
        finally:
            subprocess.run(["git", "checkout", "--", path], cwd=ROOT, check=True)
        lines = result.stdout.strip().splitlines()
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:1]
        why = [line.strip() for line in lines if line.startswith("E  ")][:1]
        caught = result.returncode != 0
        survived += not caught
        print(f"[{index}] {name}: {'caught' if caught else 'SURVIVED'} {failed} {why}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
