"""``captioner train``: fine-tune a BLIP captioner on COCO-format captions (or a Karpathy split).

    captioner train --annotations train.json --images train/ \\
        --val-annotations val.json --val-images val/ --out models/blip-ft
    captioner train --karpathy dataset_coco.json --split train --images coco/ --out models/blip-ft
    captioner train --teacher models/blip-large --images unlabeled/ --base models/mini --out models/student

With ``--teacher DIR`` it distils: the teacher's beam captions of every image under ``--images`` are the targets,
mixed per image with the human references when ``--annotations`` (or ``--karpathy``) are given as well (see
``distillation``); ``--annotations`` is then optional. The card names the teacher (``distilled_from``).

It starts from the config's ``model.path`` (downloading ``model.name`` there first, as ``serve`` does) or from
``--base PATH``, and runs transformers' ``Trainer`` (with accelerate), so mixed precision (``--precision``),
gradient accumulation, warm-up then cosine decay, weight decay, gradient clipping, checkpoints every
``--save-steps`` with ``--resume``, and data parallelism under ``torchrun`` or ``accelerate launch`` are the
library's well-trodden code, not ours. Images stream from disk through DataLoader workers and the server's own
preprocessing. With a validation set, every evaluation captions it and scores the captions (CIDEr, BLEU,
ROUGE-L); the checkpoint with the best CIDEr is the one written out.

OUT ends up a model folder that ``captioner serve`` loads as is (weights, config, tokenizer and processor files)
plus ``training.json``, the model card (see ``model_card``). Checkpoints go to OUT/checkpoints while training
and are removed once OUT is written, unless ``--keep-checkpoints``. On the CPU, the same ``--seed`` gives the
same weights. Exit status: 0 when the model was written, 2 for a usage or data error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.config import Settings
from captioner.model.weights import UNTRAINED_MARKER, WeightsUnavailable, ensure_weights, has_weights
from captioner.tools.command_line import add_command, runs
from captioner.tools.eval.annotations import EvalImage
from captioner.tools.eval.references import add_reference_arguments, optional_references_of

# torch, transformers and the modules that import them load inside the functions: `captioner --help` stays light.

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Files a processor's save_pretrained may leave out that older readers of a BLIP folder look for.
_EXTRA_PROCESSOR_FILES = ("vocab.txt",)


if TYPE_CHECKING:
    from captioner.tools.train.data import CaptionSet
    from captioner.tools.train.distillation import TeacherLabels


class TrainError(RuntimeError):
    """Why training cannot start, as one line for the operator."""


def add_train_commands(commands: Any) -> None:
    """Register ``train`` on the top-level subparsers ``commands``."""
    parser = add_command(
        commands,
        "train",
        help="fine-tune the model on COCO-format captions (writes a servable model folder)",
        doc=__doc__,
    )
    data = parser.add_argument_group("data and model")
    add_reference_arguments(
        data, annotations_help="training captions, COCO format (optional with --teacher)", required=False
    )
    data.add_argument("--images", required=True, type=Path, help="folder the training file_names are in")
    data.add_argument(
        "--teacher", type=Path, metavar="DIR", help="distil: train on this model's captions of every image in --images"
    )
    data.add_argument(
        "--teacher-captions", type=int, default=1, metavar="K", help="with --teacher: its top K captions per image"
    )
    data.add_argument("--val-annotations", type=Path, help="validation captions, COCO format")
    data.add_argument("--val-images", type=Path, help="folder the validation file_names are in")
    data.add_argument("--max-val-images", type=int, default=0, metavar="N", help="score at most N (0: all)")
    data.add_argument("--out", required=True, type=Path, help="model folder to write")
    data.add_argument("--base", type=Path, help="model folder to start from (default: the config's model.path)")

    run = parser.add_argument_group("schedule")
    run.add_argument("--epochs", type=float, default=5.0, help="passes over the captions (default 5, as BLIP)")
    run.add_argument("--max-steps", type=int, default=-1, metavar="N", help="stop after N steps (overrides --epochs)")
    run.add_argument("--batch-size", type=int, default=32, metavar="N", help="per device (default 32)")
    run.add_argument("--grad-accum", type=int, default=1, metavar="N", help="steps to accumulate per update")
    run.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (default 1e-5, as BLIP on COCO)")
    run.add_argument("--scheduler", default="cosine", help="transformers lr_scheduler_type (default cosine)")
    run.add_argument("--warmup-ratio", type=float, default=0.0, help="share of steps to warm up over")
    run.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05, as BLIP)")
    run.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    run.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 or fp16 on GPU, fp32 on CPU")
    run.add_argument("--seed", type=int, default=0)

    save = parser.add_argument_group("evaluation and checkpoints")
    save.add_argument("--eval-steps", type=int, default=0, metavar="N", help="evaluate every N steps (0: per epoch)")
    save.add_argument("--save-steps", type=int, default=0, metavar="N", help="checkpoint every N steps (0: as eval)")
    save.add_argument("--save-total-limit", type=int, default=2, metavar="N", help="checkpoints kept (plus the best)")
    save.add_argument("--logging-steps", type=int, default=10, metavar="N", help="log the loss every N steps")
    save.add_argument("--eval-batch-size", type=int, default=0, metavar="N", help="default: --batch-size")
    save.add_argument("--num-workers", type=int, default=2, metavar="N", help="DataLoader worker processes")
    save.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT/checkpoints")
    save.add_argument("--keep-checkpoints", action="store_true", help="leave OUT/checkpoints in place at the end")
    runs(parser, run_command)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        out = train(args, settings)
    except TrainError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    if out is not None:
        print(f"wrote the trained model to {out} (card: {out / 'training.json'})")
        print(f"serve it with: CAPTIONER_MODEL__PATH={out} captioner serve")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    try:
        references = optional_references_of(args)  # --split goes with --karpathy, and --karpathy needs it
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    if references is None and args.teacher is None:
        raise TrainError("give the captions to train on: --annotations FILE (or --karpathy FILE --split SPLIT), "
                         "or --teacher DIR to train on a teacher's captions of --images")  # fmt: skip
    if args.teacher_captions < 1:
        raise TrainError(f"--teacher-captions must be at least 1, got {args.teacher_captions}")
    if (args.val_annotations is None) != (args.val_images is None):
        raise TrainError("--val-annotations and --val-images go together")
    positive = {"--batch-size": args.batch_size, "--grad-accum": args.grad_accum, "--logging-steps": args.logging_steps}
    for flag, value in positive.items():
        if value < 1:
            raise TrainError(f"{flag} must be at least 1, got {value}")
    if args.max_steps == 0 or args.epochs <= 0 or args.lr <= 0 or not 0 <= args.warmup_ratio < 1:
        raise TrainError("--max-steps, --epochs and --lr must be positive and --warmup-ratio in [0, 1)")
    if args.val_annotations is not None and args.eval_steps and args.save_steps % args.eval_steps:
        # The best checkpoint can only be one that was evaluated.
        raise TrainError("--save-steps must be a multiple of --eval-steps when there is a validation set")


def resolve_precision(requested: str, device_type: str) -> str:
    """``auto`` -> bf16 on GPUs that have it, else fp16 on a GPU, fp32 on the CPU."""
    import torch

    if requested == "auto":
        if device_type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and device_type != "cuda":
        raise TrainError("--precision fp16 needs a GPU (on the CPU use bf16 or fp32)")
    return requested


def training_arguments(args: argparse.Namespace, checkpoints: Path, *, device: str, validate: bool) -> Any:
    from transformers import TrainingArguments

    precision = resolve_precision(args.precision, device)
    steps = "steps" if args.eval_steps else "epoch"
    save_steps = args.save_steps or args.eval_steps
    save_strategy = ("steps" if save_steps else "epoch") if validate else ("steps" if args.save_steps else "epoch")
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size or args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        lr_scheduler_type=args.scheduler,
        warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a share of the steps
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        eval_strategy=steps if validate else "no",
        eval_steps=args.eval_steps or None,
        save_strategy=save_strategy,
        save_steps=save_steps or 500,
        save_total_limit=args.save_total_limit,
        load_best_model_at_end=validate,
        metric_for_best_model="cider" if validate else None,
        greater_is_better=True if validate else None,
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=device == "cuda",
        dataloader_persistent_workers=args.num_workers > 0,
        remove_unused_columns=False,  # the collator needs the captions
        label_names=["labels"],
        report_to="none",
    )


def train(args: argparse.Namespace, settings: Settings) -> Path | None:
    """Train as ``args`` say; return OUT on the process that wrote it (None on the other ranks)."""
    check_arguments(args)
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from captioner.model import acceleration
    from captioner.model.blip import resolve_device
    from captioner.model.preprocessing import ImagePreprocessor
    from captioner.tools.train.data import CaptionCollator, CaptionDataset, CaptionSet
    from captioner.tools.train.evaluation import CaptioningTrainer, CaptionScorer

    base = _base_model(args, settings)
    if args.teacher is not None and not has_weights(args.teacher):
        raise TrainError(f"--teacher {args.teacher}: no model there (config.json and weights)")
    out: Path = args.out
    if out.resolve() == base.resolve():
        raise TrainError(f"--out {out} is the base model's folder; write the trained model somewhere else")
    if args.teacher is not None and out.resolve() == args.teacher.resolve():
        raise TrainError(f"--out {out} is the teacher's folder; write the trained model somewhere else")
    checkpoints = out / "checkpoints"
    earlier = sorted(checkpoints.glob("checkpoint-*"))
    if args.resume and not earlier:
        raise TrainError(f"--resume: no checkpoint in {checkpoints} to continue from")
    if earlier and not args.resume:
        raise TrainError(f"{checkpoints} holds checkpoints of an earlier run: add --resume, or choose another --out")

    try:
        train_set, teacher_labels = _training_captions(args, settings)
        val_set = CaptionSet.load(args.val_annotations, args.val_images) if args.val_annotations else None
    except ValueError as exc:  # AnnotationsError, DistillationError: names the file and what is wrong
        raise TrainError(str(exc)) from exc
    if val_set is not None and args.max_val_images > 0:
        val_set = CaptionSet(val_set.images[: args.max_val_images], val_set.image_dir, val_set.notes)

    device = resolve_device(settings.model.device)
    # model.num_threads as serving applies it: on the CPU one core is left to the DataLoader workers, whose
    # competition would otherwise stall the OpenMP team at every operator (see acceleration.threads_for).
    acceleration.set_threads(settings.model.num_threads, device)
    processor: Any = BlipProcessor.from_pretrained(base)
    model: Any = BlipForConditionalGeneration.from_pretrained(base, dtype=torch.float32)  # fp32 master weights
    preprocessor = ImagePreprocessor.from_pretrained(base, max_pixels=settings.limits.max_pixels)
    prompt = settings.model.prompt
    validate = val_set is not None
    scorer = None
    if val_set is not None:
        scorer = CaptionScorer(
            val_set,
            preprocessor,
            processor.tokenizer,
            prompt,
            settings.generation,
            batch_size=args.eval_batch_size or args.batch_size,
            num_workers=args.num_workers,
        )
    trainer = CaptioningTrainer(
        model=model,
        args=training_arguments(args, checkpoints, device=device.type, validate=validate),
        data_collator=CaptionCollator(processor.tokenizer, prompt, model.config.text_config.bos_token_id),
        train_dataset=CaptionDataset(train_set.pairs(), preprocessor),
        eval_dataset=CaptionDataset(val_set.pairs(), preprocessor) if val_set is not None else None,
        scorer=scorer,
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(str(out))  # every rank calls it; it writes on the main process only
    if not trainer.is_world_process_zero():
        return None
    _finish_folder(out, base, processor)
    from captioner.tools.train.model_card import build_card, write_card

    card = build_card(
        args,
        settings,
        base=base,
        out=out,
        trainer=trainer,
        train_set=train_set,
        val_set=val_set,
        teacher_labels=teacher_labels,
    )
    write_card(out, card)
    if not args.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return out


def _training_captions(args: argparse.Namespace, settings: Settings) -> tuple[CaptionSet, TeacherLabels | None]:
    """The training set: the human references, the teacher's captions of ``--images``, or both mixed per image."""
    from captioner.tools.train.data import CaptionSet
    from captioner.tools.train.distillation import TEACHER_CAPTIONS, label_with_teacher, mix_references

    references = optional_references_of(args)
    human: CaptionSet | None = CaptionSet.load(references, args.images) if references is not None else None
    if args.teacher is None:
        assert human is not None and references is not None  # check_arguments: one of the two is given
        if not human.images:
            raise TrainError(f"{references}: no image has a caption")
        return human, None
    labels = label_with_teacher(
        settings,
        args.teacher,
        args.images,
        args.out / TEACHER_CAPTIONS,
        captions_per_image=args.teacher_captions,
        batch_size=args.eval_batch_size or args.batch_size,
    )
    human_images: list[EvalImage] = human.images if human is not None else []
    notes = human.notes if human is not None else []
    return CaptionSet(mix_references(labels.images, human_images), args.images, notes), labels


def _base_model(args: argparse.Namespace, settings: Settings) -> Path:
    if args.base is not None:
        if not has_weights(args.base):
            raise TrainError(f"--base {args.base}: no model there (config.json and weights)")
        return Path(args.base)
    try:
        return ensure_weights(settings.model)
    except WeightsUnavailable as exc:
        raise TrainError(str(exc)) from exc


def _finish_folder(out: Path, base: Path, processor: Any) -> None:
    """Make OUT a complete model folder: tokenizer and processor files, and no stale markers."""
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)  # preprocessor_config.json, for readers older than v5
    for name in _EXTRA_PROCESSOR_FILES:
        if (base / name).is_file() and not (out / name).exists():
            shutil.copyfile(base / name, out / name)
    # The weights are trained now; an UNTRAINED marker (left by an earlier run into OUT) would make the server
    # warn that they are random. Trainer's pickled arguments are in the card as plain JSON instead.
    for stale in (UNTRAINED_MARKER, "training_args.bin"):
        (out / stale).unlink(missing_ok=True)
