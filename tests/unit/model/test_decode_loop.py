"""The loop around the running set (captioner/model/decode_loop.py), with a scripted engine: what it does with
joins and leaves between steps, and with failures while admitting, while stepping, and on stop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from captioner.errors import ModelError
from captioner.model.decode_engine import Answer, DecodeRequest
from captioner.model.decode_loop import (
    IMMEDIATE,
    JoinPolicy,
    Message,
    join_message,
    leave_message,
    run_decode_loop,
)
from captioner.model.protocol import CaptionJob, DecodeProgress


class ScriptedEngine:
    """Each live request ends after ``steps_to_end`` steps; failures on demand."""

    def __init__(self, steps_to_end: int = 2) -> None:
        self.live: dict[int, int] = {}
        self.admitted: list[list[int]] = []
        self.steps_at_admission: list[int] = []
        self.left: list[set[int]] = []
        self.steps = 0
        self.steps_to_end = steps_to_end
        self.fail_admit: BaseException | None = None
        self.fail_step: BaseException | None = None

    @property
    def idle(self) -> bool:
        return not self.live

    @property
    def rows(self) -> int:
        return 3 * len(self.live)

    def admit(self, requests: Sequence[DecodeRequest]) -> list[Answer]:
        if not requests:
            return []
        self.admitted.append([r.request_id for r in requests])
        self.steps_at_admission.append(self.steps)
        if self.fail_admit is not None:
            raise self.fail_admit
        for r in requests:
            self.live[r.request_id] = 0
        return []

    def leave(self, ids: set[int]) -> None:
        self.left.append(set(ids))
        for i in ids:
            self.live.pop(i, None)

    def step(self) -> list[Answer]:
        self.steps += 1
        if self.fail_step is not None:
            raise self.fail_step
        ended = []
        for i in list(self.live):
            self.live[i] += 1
            if self.live[i] >= self.steps_to_end:
                del self.live[i]
                ended.append(Answer(i, captions=[]))
        return ended

    def fail_all(self, error: BaseException) -> list[Answer]:
        answers = [Answer(i, error=error) for i in self.live]
        self.live.clear()
        return answers


JOB: Any = CaptionJob(pixel_values=None)  # type: ignore[arg-type]  # the scripted engine never looks


def run(
    engine: ScriptedEngine, inbox: list[Sequence[Message] | None], policy: JoinPolicy = IMMEDIATE
) -> tuple[list[Answer], list[DecodeProgress]]:
    """Feed ``inbox`` one ``take`` at a time (empty once it runs out while busy; stop once it runs out idle)."""
    answers: list[Answer] = []
    reports: list[DecodeProgress] = []
    waits: list[bool] = []

    def take(wait: bool) -> Sequence[Message] | None:
        waits.append(wait)
        if inbox:
            return inbox.pop(0)
        return None if wait else []

    def emit(batch: list[Answer], progress: DecodeProgress | None) -> None:
        answers.extend(batch)
        if progress is not None:
            reports.append(progress)

    run_decode_loop(engine, take, emit, policy)  # type: ignore[arg-type]
    return answers, reports


def test_joins_between_steps_and_answers_as_each_ends() -> None:
    engine = ScriptedEngine(steps_to_end=2)
    answers, reports = run(engine, [[join_message(1, JOB)], [join_message(2, JOB)]])
    assert engine.admitted == [[1], [2]]  # the second joined while the first was decoding
    assert [a.request_id for a in answers] == [1, 2] and all(a.error is None for a in answers)
    assert reports[-1] == DecodeProgress(rows=0, steps=engine.steps)


def test_a_leave_in_the_same_take_as_its_join_never_reaches_the_model() -> None:
    engine = ScriptedEngine()
    answers, _ = run(engine, [[join_message(1, JOB), join_message(2, JOB), leave_message(1)]])
    assert engine.admitted == [[2]]
    assert [a.request_id for a in answers] == [2]


def test_a_failed_admission_fails_the_joining_images_only() -> None:
    boom = RuntimeError("vision pass failed")

    class FailsSecondAdmission(ScriptedEngine):
        def admit(self, requests: Sequence[DecodeRequest]) -> list[Answer]:
            self.fail_admit = boom if any(r.request_id == 2 for r in requests) else None
            return super().admit(requests)

    engine = FailsSecondAdmission(steps_to_end=3)
    answers, _ = run(engine, [[join_message(1, JOB)], [join_message(2, JOB)]])
    assert {a.request_id: a.error for a in answers} == {1: None, 2: boom}


def test_a_failed_step_fails_every_live_image_and_the_loop_goes_on() -> None:
    engine = ScriptedEngine()
    engine.fail_step = RuntimeError("step failed")
    answers, _ = run(engine, [[join_message(1, JOB), join_message(2, JOB)]])
    assert sorted(a.request_id for a in answers) == [1, 2]
    assert all(isinstance(a.error, RuntimeError) for a in answers)


def test_stop_fails_what_is_still_live() -> None:
    engine = ScriptedEngine(steps_to_end=100)
    answers, _ = run(engine, [[join_message(1, JOB)], None])
    assert [a.request_id for a in answers] == [1] and isinstance(answers[0].error, ModelError)


def test_a_fatal_device_error_is_raised_once_its_answers_are_out() -> None:
    engine = ScriptedEngine()
    fatal = RuntimeError("CUDA error: an illegal memory access was encountered")
    engine.fail_step = fatal
    answers: list[Answer] = []
    script: list[Sequence[Message]] = [[join_message(1, JOB)]]

    def take(wait: bool) -> Sequence[Message] | None:
        return script.pop(0) if script else None

    with pytest.raises(RuntimeError) as raised:
        run_decode_loop(engine, take, lambda batch, _: answers.extend(batch))  # type: ignore[arg-type]
    assert raised.value is fatal
    assert [(a.request_id, a.error) for a in answers] == [(1, fatal)]


# ------------------------------------------------------------------------------------------ the join policy


def test_an_idle_set_admits_at_once_a_busy_one_groups_arrivals_or_waits_a_few_steps() -> None:
    policy = JoinPolicy(min_images=3, max_wait_steps=2)
    assert policy.admit_now(waiting=1, waited_steps=0, idle=True)
    assert not policy.admit_now(waiting=2, waited_steps=1, idle=False)
    assert policy.admit_now(waiting=3, waited_steps=0, idle=False)  # a group
    assert policy.admit_now(waiting=1, waited_steps=2, idle=False)  # waited long enough
    assert not policy.admit_now(waiting=0, waited_steps=9, idle=True)  # nothing to admit


def test_arrivals_during_decoding_join_together() -> None:
    engine = ScriptedEngine(steps_to_end=10)
    inbox: list[Sequence[Message] | None] = [[join_message(1, JOB)], [join_message(2, JOB)], [join_message(3, JOB)]]
    answers, _ = run(engine, inbox, JoinPolicy(min_images=2, max_wait_steps=5))
    assert engine.admitted == [[1], [2, 3]]  # 1 into the idle set; 2 waited one step for 3
    assert sorted(a.request_id for a in answers) == [1, 2, 3]


def test_a_lone_arrival_joins_after_max_wait_steps() -> None:
    engine = ScriptedEngine(steps_to_end=10)
    answers, _ = run(engine, [[join_message(1, JOB)], [join_message(2, JOB)]], JoinPolicy(4, max_wait_steps=3))
    assert engine.admitted == [[1], [2]] and sorted(a.request_id for a in answers) == [1, 2]
    assert engine.steps_at_admission == [0, 4]  # 2 arrived before step 2 and waited steps 2, 3 and 4


def test_a_waiting_arrival_that_leaves_never_reaches_the_model_and_stop_fails_the_waiting_too() -> None:
    engine = ScriptedEngine(steps_to_end=100)
    policy = JoinPolicy(min_images=4, max_wait_steps=50)
    answers, _ = run(engine, [[join_message(1, JOB)], [join_message(2, JOB)], [leave_message(2), join_message(3, JOB)],
                              None], policy)  # fmt: skip
    assert engine.admitted == [[1]]
    assert {a.request_id for a in answers} == {1, 3} and all(isinstance(a.error, ModelError) for a in answers)
