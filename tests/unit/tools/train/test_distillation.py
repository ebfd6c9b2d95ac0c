"""How ``train --teacher`` mixes the teacher's captions with human references: per image, all of both."""

from __future__ import annotations

from captioner.tools.eval.annotations import EvalImage
from captioner.tools.train.distillation import mix_references


def test_teacher_alone_gives_its_captions_named_by_file() -> None:
    teacher = [EvalImage(0, "a.png", ("a red circle",)), EvalImage(1, "b.png", ("a blue square", "a square"))]
    assert mix_references(teacher, []) == [
        EvalImage("a.png", "a.png", ("a red circle",)),
        EvalImage("b.png", "b.png", ("a blue square", "a square")),
    ]


def test_each_image_keeps_its_human_references_and_the_teachers_new_captions() -> None:
    teacher = [EvalImage(0, "a.png", ("a red circle",)), EvalImage(1, "b.png", ("a blue square",))]
    human = [
        EvalImage(7, "b.png", ("a blue square", "blue box on white")),  # the teacher's caption is one of these
        EvalImage(9, "c.png", ("a green star",)),  # the teacher could not caption c.png
    ]
    assert mix_references(teacher, human) == [
        EvalImage("a.png", "a.png", ("a red circle",)),
        EvalImage("b.png", "b.png", ("a blue square", "blue box on white")),
        EvalImage("c.png", "c.png", ("a green star",)),
    ]


def test_ids_from_the_two_files_never_collide() -> None:
    # Both files number their images from 0: the mixed set names images by file instead.
    mixed = mix_references([EvalImage(0, "a.png", ("x",))], [EvalImage(0, "z.png", ("y",))])
    assert [image.image_id for image in mixed] == ["a.png", "z.png"]
