"""``captioner caption``: folders of good and bad files, resuming, CSV, and --server against a live server.

Everything runs the real tiny model: offline through the server's own batching code, or over real HTTP.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from captioner.cli import main
from captioner.tools.caption.command import find_images
from captioner.tools.caption.output import open_output
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

MODEL_NAME = "test/tiny-blip"


@pytest.fixture
def workdir(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder as the working directory (no config.yaml), with the tiny model configured by env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tiny_model_dir))
    monkeypatch.setenv("CAPTIONER_MODEL__NAME", MODEL_NAME)
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")  # as tiny_settings: compared with the server's answers
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")  # as tiny_settings: in process, started in a second
    monkeypatch.delenv("CAPTIONER_API_KEY", raising=False)
    return tmp_path


GOOD = {
    "photos/a.png": photo(1),
    "photos/b.png": photo(2),
    "photos/nested/c.jpg": photo(3, fmt="JPEG"),
    "photos/nested/d.webp": photo(4, fmt="WEBP"),
}
BAD = {
    "photos/corrupt.jpg": b"\xff\xd8\xff\xe0 definitely not the rest of a JPEG",
    "photos/empty.png": b"",
}
IGNORED = {  # not image files by name, or hidden: a folder search leaves them alone
    "photos/readme.txt": b"some notes",
    "photos/.hidden.png": photo(5),
    "photos/.cache/e.png": photo(6),
}


@pytest.fixture
def photos(workdir: Path) -> Path:
    for name, data in {**GOOD, **BAD, **IGNORED}.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return workdir / "photos"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def api_captions(server: LiveServer, data: bytes, num_captions: int) -> list[dict[str, Any]]:
    response = httpx.post(
        server.url + "/api/v1/caption",
        params={"num_captions": num_captions},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    captions: list[dict[str, Any]] = response.json()["captions"]
    return captions


def assert_same_captions(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [c["text"] for c in got] == [c["text"] for c in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["confidence"] == pytest.approx(theirs["confidence"], rel=1e-4)


def test_find_images_walks_folders_in_order_and_keeps_named_files(photos: Path) -> None:
    found, missing = find_images(["photos", "photos/readme.txt", "photos/a.png", "nowhere"])
    assert [str(p) for p in found] == [
        "photos/a.png",
        "photos/b.png",
        "photos/corrupt.jpg",
        "photos/empty.png",
        "photos/nested/c.jpg",
        "photos/nested/d.webp",
        "photos/readme.txt",  # named on the command line: always tried
    ]
    assert [(m.path, m.code) for m in missing] == [("nowhere", "not_found")]


def test_folder_with_good_and_bad_files(
    photos: Path, live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["caption", "photos", "--out", "captions.jsonl", "--num-captions", "2", "--batch-size", "3"])

    assert code == 1  # some files failed
    records = {r["path"]: r for r in read_jsonl(photos.parent / "captions.jsonl")}
    assert sorted(records) == sorted(GOOD)
    for name, data in GOOD.items():
        record = records[name]
        assert record["image_sha256"] == hashlib.sha256(data).hexdigest()
        assert record["model"] == MODEL_NAME
        # The same model code as the server: the same captions the API gives for the same bytes.
        assert_same_captions(record["captions"], api_captions(live_server, data, 2))
    err = capsys.readouterr().err
    assert "failed: photos/corrupt.jpg: invalid_image:" in err
    assert "failed: photos/empty.png: invalid_image:" in err
    assert "readme.txt" not in err and "hidden" not in err
    assert "6 images found: 4 captioned, 0 already done, 2 failed" in err


def test_resume_skips_what_the_output_already_holds(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = photos.parent / "captions.jsonl"
    assert main(["caption", "photos/a.png", "photos/b.png", "--out", str(out)]) == 0
    first = read_jsonl(out)
    assert [r["path"] for r in sorted(first, key=lambda r: r["path"])] == ["photos/a.png", "photos/b.png"]
    # An interrupted run leaves half a line; the next run cuts it off and captions that image again.
    with out.open("a") as handle:
        handle.write('{"path": "photos/nested/c.jpg", "capt')
    capsys.readouterr()

    code = main(["caption", "photos", "--out", str(out)])

    assert code == 1  # the two bad files, again
    records = read_jsonl(out)  # every line parses: the partial one is gone
    assert records[:2] == first  # what was there is untouched
    assert sorted(r["path"] for r in records) == sorted(GOOD)  # each image once, no duplicates
    err = capsys.readouterr().err
    assert "incomplete last line" in err
    assert f"6 images found: 2 captioned, 2 already done (in {out}), 2 failed" in err

    # Named differently (./ prefix, absolute), the same files are still recognised as done.
    capsys.readouterr()
    assert main(["caption", "./photos/a.png", str(photos / "b.png"), "--out", str(out)]) == 0
    assert "0 captioned, 2 already done" in capsys.readouterr().err
    assert len(read_jsonl(out)) == len(GOOD)


def test_csv_output_one_row_per_caption_and_resume(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = photos.parent / "captions.csv"
    assert main(["caption", "photos/a.png", "--out", str(out), "--num-captions", "3"]) == 0
    assert main(["caption", "photos/a.png", "photos/b.png", "--out", str(out), "--num-captions", "3"]) == 0

    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "rank", "caption", "confidence", "image_sha256", "model"]
    by_path: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    assert sorted(by_path) == ["photos/a.png", "photos/b.png"]
    for path, group in by_path.items():
        assert [row["rank"] for row in group] == [str(i) for i in range(1, len(group) + 1)]
        assert 1 <= len(group) <= 3 and all(row["caption"] for row in group)
        confidences = [float(row["confidence"]) for row in group]
        assert confidences == sorted(confidences, reverse=True) and all(0 < c <= 1 for c in confidences)
        assert {row["image_sha256"] for row in group} == {hashlib.sha256(GOOD[path]).hexdigest()}
    assert out.read_text().count("path,rank,caption") == 1  # one header, even after appending


def test_stdout_and_bad_arguments(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["caption", "photos/a.png"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["path"] == "photos/a.png"

    assert main(["caption", "photos/a.png", "--out", "captions.txt"]) == 2
    assert "must end in .jsonl or .csv" in capsys.readouterr().err

    assert main(["caption", "photos/a.png", "--num-captions", "9"]) == 2  # over generation.max_num_captions
    assert "num_captions must be between 1 and 3" in capsys.readouterr().err

    (photos.parent / "other.jsonl").write_text("this is not a captions file\n")
    assert main(["caption", "photos/a.png", "--out", "other.jsonl"]) == 2
    assert "not a captions record" in capsys.readouterr().err
    assert (photos.parent / "other.jsonl").read_text() == "this is not a captions file\n"  # left alone


def test_server_mode_matches_the_api(photos: Path, live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = photos.parent / "remote.jsonl"
    code = main(["caption", "photos", "--server", live_server.url, "--out", str(out), "--num-captions", "2"])

    assert code == 1
    records = {r["path"]: r for r in read_jsonl(out)}
    assert sorted(records) == sorted(GOOD)
    for name, data in GOOD.items():
        assert records[name]["image_sha256"] == hashlib.sha256(data).hexdigest()
        assert records[name]["model"] == MODEL_NAME
        assert_same_captions(records[name]["captions"], api_captions(live_server, data, 2))
    err = capsys.readouterr().err
    assert "failed: photos/corrupt.jpg: invalid_image:" in err
    assert "failed: photos/empty.png: invalid_image:" in err


@pytest.fixture(scope="module")
def strict_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    """A server that wants an API key and allows 3 requests a second per key: the client must retry."""
    settings = tiny_settings(
        tiny_model_dir, auth={"api_keys": ["batch-key"]}, rate_limit={"per_key_rps": 3, "burst": 1}
    )
    with LiveServer(settings) as live:
        yield live


def test_server_mode_sends_the_key_and_honours_retry_after(
    photos: Path, strict_server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPTIONER_API_KEY", "batch-key")
    good = [str(Path(name)) for name in GOOD]
    code = main(["caption", *good, "--server", strict_server.url, "--out", "keyed.jsonl", "--concurrency", "4"])

    assert code == 0, capsys.readouterr().err
    assert sorted(r["path"] for r in read_jsonl(photos.parent / "keyed.jsonl")) == sorted(GOOD)
    assert strict_server.metric("captioner_requests_total", 'status="429"') > 0  # it was refused, and retried

    code = main(["caption", "photos/a.png", "--server", strict_server.url, "--api-key", "wrong", "--out", "x.jsonl"])
    assert code == 1
    assert "failed: photos/a.png: unauthorized: invalid API key" in capsys.readouterr().err


def test_a_file_over_the_size_limit_fails_alone(
    photos: Path, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPTIONER_LIMITS__MAX_BODY_BYTES", str(len(GOOD["photos/a.png"])))
    (photos / "big.png").write_bytes(photo(7, size=(640, 480)))

    code = main(["caption", "photos/a.png", "photos/big.png", "--server", live_server.url, "--out", "sized.jsonl"])

    assert code == 1
    assert [r["path"] for r in read_jsonl(photos.parent / "sized.jsonl")] == ["photos/a.png"]
    assert "failed: photos/big.png: too_large: the file is" in capsys.readouterr().err


def test_unreachable_server_is_one_clear_line(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.net import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["caption", "photos/a.png", "--server", url, "--out", "x.jsonl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"cannot reach the server at {url}")


def test_output_store_recognises_paths_across_spellings(workdir: Path) -> None:
    with open_output("done.jsonl") as output:
        assert output.done == set()
    (workdir / "done.jsonl").write_text(json.dumps({"path": "x/../a.png", "captions": []}) + "\n")
    with open_output("done.jsonl") as output:
        assert output.done == {str(workdir / "a.png")}


def test_local_backend_batches_like_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    import asyncio

    from captioner.tools.caption.backends import LocalBackend, offline_settings
    from captioner.tools.caption.command import caption_files

    paths = []
    for seed in range(8):
        path = tmp_path / f"{seed}.png"
        path.write_bytes(photo(100 + seed))
        paths.append(path)
    settings = offline_settings(tiny_settings(tiny_model_dir), batch_size=4)

    async def run() -> tuple[int, float, int]:
        backend = await LocalBackend.start(settings, num_captions=1)
        done: list[str] = []
        try:
            await caption_files(paths, backend, on_record=lambda r: done.append(r.path), on_failure=print)
        finally:
            await backend.aclose()
        samples = {s.name: s.value for m in backend.service.metrics.batch_size.collect() for s in m.samples}
        return len(done), samples["captioner_batch_size_sum"], int(samples["captioner_batch_size_count"])

    captioned, images, generate_calls = asyncio.run(run())
    assert captioned == 8 and images == 8
    assert generate_calls <= 3  # full batches of 4 (a straggler may make a third), not one call per image
