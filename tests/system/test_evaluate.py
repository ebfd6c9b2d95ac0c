"""``captioner eval``: the report's scores must equal pycocoevalcap's scorers run directly on the same captions.

The references are written from the tiny model's own captions (one exact, one partial, one unrelated), so the
scores are far from zero and a wrong tokenisation, a mixed-up image or a missing scorer changes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captioner.cli import main
from captioner.tools.eval.coco_scores import PTB_TOKENIZER, PYTHON_TOKENIZER, python_ptb_tokenize
from tests.support.images import photo
from tests.support.servers import LiveServer


@pytest.fixture
def workdir(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tiny_model_dir))
    monkeypatch.setenv("CAPTIONER_MODEL__NAME", "test/tiny-blip")
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")  # as tiny_settings: compared with the server's answers
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")  # as tiny_settings: in process, started in a second
    return tmp_path


FILES = ["a.png", "b.png", "c.jpg", "d.png"]


@pytest.fixture
def dataset(workdir: Path) -> tuple[Path, dict[str, str]]:
    """Images, the model's top caption for each (from `captioner caption`), and a COCO annotations file."""
    images = workdir / "images"
    images.mkdir()
    for seed, name in enumerate(FILES):
        (images / name).write_bytes(photo(40 + seed, fmt="JPEG" if name.endswith(".jpg") else "PNG"))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    assert main(["caption", str(images), "--out", "captions.jsonl"]) == 1  # broken.png fails
    top = {
        Path(r["path"]).name: r["captions"][0]["text"]
        for r in map(json.loads, (workdir / "captions.jsonl").read_text().splitlines())
    }
    assert sorted(top) == sorted(FILES)
    words = {name: caption.split() for name, caption in top.items()}
    references = {
        "a.png": [top["a.png"].capitalize() + ".", "A photo of something else entirely."],
        "b.png": [" ".join(words["b.png"][: max(1, len(words["b.png"]) // 2)]) + " on a table", "Some stripes!"],
        "c.jpg": ["A man's dog isn't sleeping (yet), he's running -- fast.", "Two cats on a mat"],
        "d.png": [f'It\'s "{top["d.png"]}", really', "colourful shapes and stripes"],
    }
    annotations: dict[str, Any] = {
        "images": [{"id": 100 + i, "file_name": name} for i, name in enumerate([*FILES, "broken.png", "nope.png"])],
        "annotations": [
            {"id": 1000 + n, "image_id": 100 + i, "caption": caption}
            for i, name in enumerate(FILES)
            for n, caption in enumerate(references[name], start=10 * i)
        ]
        + [
            {"id": 2000, "image_id": 104, "caption": "a broken file"},
            {"id": 2001, "image_id": 105, "caption": "a file that is not there"},
            {"id": 2002, "image_id": 999, "caption": "an annotation without an image"},
        ],
    }
    path = workdir / "captions_coco.json"
    path.write_text(json.dumps(annotations))
    return path, top


def direct_scores(references: dict[int, list[str]], candidates: dict[int, str], *, java: bool) -> dict[str, Any]:
    """pycocoevalcap's scorers run as COCOEvalCap.evaluate runs them (tokenising gts and res separately)."""
    if java:
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
        res = tokenizer.tokenize({k: [{"caption": c}] for k, c in candidates.items()})
    else:
        gts = {k: [python_ptb_tokenize(c) for c in v] for k, v in references.items()}
        res = {k: [python_ptb_tokenize(c)] for k, c in candidates.items()}
    scores: dict[str, Any] = {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        scores[f"Bleu_{n + 1}"] = (bleu[n], bleu_each[n])
    if java:
        meteor = Meteor()
        scores["METEOR"] = meteor.compute_score(gts, res)
        del meteor
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)
    scores["CIDEr"] = Cider().compute_score(gts, res)
    return scores


def check_report(report: dict[str, Any], top: dict[str, str], *, java: bool) -> None:
    assert report["num_images"] == len(FILES) and report["num_failed"] == 2
    assert sorted((f["path"].rsplit("/", 1)[-1], f["code"]) for f in report["failed"]) == [
        ("broken.png", "invalid_image"),
        ("nope.png", "unreadable"),
    ]
    images = {image["image_id"]: image for image in report["images"]}
    assert {images[i]["file_name"]: images[i]["caption"] for i in images} == top  # what `caption` gave
    references = {i: image["references"] for i, image in images.items()}
    candidates = {i: image["caption"] for i, image in images.items()}
    expected = direct_scores(references, candidates, java=java)

    assert list(report["metrics"]) == list(expected)  # BLEU-1..4, (METEOR,) ROUGE-L, CIDEr: nothing else
    for name, (corpus, each) in expected.items():
        assert report["metrics"][name] == pytest.approx(float(corpus), rel=1e-9, abs=1e-12), name
        for image_id, value in zip(references, each, strict=True):
            assert images[image_id]["scores"][name] == pytest.approx(float(value), rel=1e-9, abs=1e-12), name
    # References were built to overlap: the scores are real numbers, not an all-zero report that matches anything.
    assert report["metrics"]["Bleu_1"] > 0.2 and report["metrics"]["CIDEr"] > 0.1
    assert report["metrics"]["ROUGE_L"] > 0.2
    assert not any("no reference caption" in n for n in report["notes"])
    assert any("annotations name an image id" in n for n in report["notes"])


def test_eval_with_java_matches_pycocoevalcap(
    dataset: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert shutil.which("java"), "java is missing: `make system-deps` installs it"
    annotations, top = dataset
    capsys.readouterr()

    code = main(["eval", "--annotations", str(annotations), "--images", "images", "--out", "report.json"])

    assert code == 1  # two images could not be scored
    report = json.loads(Path("report.json").read_text())
    assert report["tokenizer"] == PTB_TOKENIZER
    assert report["metrics"]["METEOR"] > 0
    check_report(report, top, java=True)
    out = capsys.readouterr().out
    assert "report in report.json" in out and "METEOR" in out and "CIDEr" in out


def test_eval_without_java_notes_it_and_still_matches(
    dataset: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    annotations, top = dataset
    monkeypatch.setenv("PATH", str(Path(annotations).parent / "no-java-here"))
    capsys.readouterr()

    code = main(["eval", "--annotations", str(annotations), "--images", "images"])  # report on stdout

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 1
    assert report["tokenizer"] == PYTHON_TOKENIZER
    assert "METEOR" not in report["metrics"]
    assert any("METEOR not computed" in note and "Java" in note for note in report["notes"])
    assert "note: METEOR not computed" in captured.err
    check_report(report, top, java=False)


def test_eval_through_a_server_gives_the_same_report(
    dataset: tuple[Path, dict[str, str]], live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    annotations, top = dataset
    monkeypatch.setenv("PATH", str(Path(annotations).parent / "no-java-here"))  # skip METEOR's JVM: faster
    args = ["eval", "--annotations", str(annotations), "--images", "images"]

    assert main([*args, "--out", "local.json"]) == 1
    assert main([*args, "--out", "remote.json", "--server", live_server.url]) == 1

    local, remote = (json.loads(Path(name).read_text()) for name in ("local.json", "remote.json"))
    assert remote["server"] == live_server.url
    assert [i["caption"] for i in remote["images"]] == [i["caption"] for i in local["images"]]
    assert {i["file_name"]: i["caption"] for i in remote["images"]} == top
    assert remote["metrics"] == pytest.approx(local["metrics"])


def test_python_tokenizer_matches_ptb_on_caption_text() -> None:
    assert shutil.which("java"), "java is missing: `make system-deps` installs it"
    sentences = [
        "A man riding a wave on top of a surfboard.",
        "Two dogs don't play; they're sleeping!",
        "A black-and-white photo of a cat's bowl (empty).",
        'A sign that says "STOP" at 3.5 p.m., near 1,000 cars...',
        "Kids can't and won't eat the pizza -- really?",
        "The dogs' toys & a man's hat / and/or a U.S. flag",
        "An old-fashioned clock: it reads 10:30 ",
        "It's a 'quoted' word, isn't it? Yes: 50% off $5 #tag",
        "Mr. Smith and Dr. Who at St. Paul's; e.g. etc.",
        "a living room with a couch , a table and a tv .",
        "The clock on the tower says it's 3 o'clock.",
        "People wait for the bus; it's late again!!",
        "   A    stop sign   with graffiti on it.   ",
        "[brackets] {braces} and \u201ccurly\u201d quotes \u2014 a dash",
    ]
    ptb = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    assert [python_ptb_tokenize(s) for s in sentences] == [ptb[i][0] for i in range(len(sentences))]
