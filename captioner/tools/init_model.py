"""``captioner init-model``: write an untrained, randomly initialised BLIP captioner for tests and benchmarks.

The folder holds everything ``BlipForConditionalGeneration.from_pretrained`` and ``BlipProcessor.from_pretrained``
need, built offline: a BLIP config, safetensors weights, a real BERT WordPiece tokenizer over a small English caption
vocabulary (``[DEC]`` as BOS and ``[ENC]`` as an extra special token, as in ``Salesforce/blip-image-captioning-base``),
the image processor, and an ``UNTRAINED`` marker so the server can warn that its captions mean nothing.

Random weights left as transformers initialises them caption every image alike, or collapse onto special tokens.
``_shape_weights`` and ``_calibrate`` set them so captions are never empty, follow the image, and end (see there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from captioner.model.weights import UNTRAINED_MARKER

SIZES = ("tiny", "mini", "small", "base")  # cheapest first

# BERT-uncased layout for the first ids, so [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103 as in BLIP.
_SPECIALS = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_PUNCTUATION = list(".,!?'\"-()/:;&+%$#@*=<>[]_~")
# Whole words a caption might use. "a", "picture" and "of" must be here so the prompt tokenises to whole words.
_CAPTION_WORDS = """
a an the of in on at by with and or to from for into onto over under near next behind front top bottom side
is are was be being has have its their his her it this that there these those some many few two three four five
six seven eight nine ten one group pair couple lot several other each while up down out off through around
picture photo image view close shot background foreground scene painting drawing pattern shape shapes color colors
red green blue yellow orange purple pink brown black white gray grey gold silver dark light bright colorful striped
man woman men women person people boy girl child children kid kids baby player players crowd family friends
guy lady team chef skier surfer rider
dog dogs cat cats bird birds horse horses cow cows sheep elephant elephants giraffe giraffes zebra zebras bear
bears fish duck ducks animal animals puppy kitten teddy
car cars truck trucks bus buses train trains plane airplane boat boats bike bicycle motorcycle street road
sidewalk traffic sign signs light lights pole fence building buildings house houses city tower bridge window
windows door wall walls roof floor room kitchen bathroom bedroom table tables chair chairs couch bed desk shelf
computer laptop phone screen keyboard clock book books cup cups plate plates bowl bowls bottle glass food pizza
sandwich cake donut banana bananas apple apples vegetables fruit meat bread hot broccoli coffee wine
tree trees grass field park garden flower flowers plant plants water river lake ocean beach sand wave waves sky
cloud clouds sun snow mountain mountains hill hills rock rocks forest desert ground dirt path sunset night
ball frisbee kite kites umbrella bag hat shirt jacket dress tie glasses board skateboard surfboard skis racket
bat glove game tennis baseball soccer court stadium station airport market shop store restaurant office
sink toilet mirror oven refrigerator microwave television tv vase pot box basket lamp pillow blanket curtain
track platform runway harbor dock fountain statue bench tent truck tracks wheel seat
sitting standing walking running riding playing eating holding looking flying laying lying parked driving
jumping swimming surfing skiing carrying wearing watching waiting talking smiling posing covered filled made
cutting cooking drinking reading sleeping throwing catching hitting swinging pulling pushing crossing
sits stands walks runs rides plays eats holds looks flies lays lies parks drives jumps waits
large small big little tall long short old young new wooden metal plastic empty full open closed round square
black and white blurry sunny cloudy snowy wet dry busy quiet clean dirty green grassy rocky sandy
very together alone inside outside above below between against along across toward towards beside
first last top middle left right half another something someone lots
"""
_SUFFIXES = ["##s", "##es", "##ed", "##ing", "##er", "##ers", "##ly", "##y", "##n", "##d", "##e"]
_LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789")
WORD_PIECES_BASE = 30522  # BLIP-base's WordPiece vocabulary; [DEC] and [ENC] follow at 30522 and 30523.


def build_vocab(size: str) -> list[str]:
    """The WordPiece vocabulary (vocab.txt order); ``base`` is padded with [unusedN] to BLIP-base's exact size."""
    pieces = [*_SPECIALS, *_PUNCTUATION, *_LETTERS, *(f"##{c}" for c in _LETTERS), *_SUFFIXES]
    # Each token once (first place wins): a repeat would shift every later id off what the config says.
    vocab = list(dict.fromkeys([*pieces, *_CAPTION_WORDS.split()]))
    if size == "base":
        vocab += [f"[unused{i}]" for i in range(99, 99 + WORD_PIECES_BASE - len(vocab))]
    return vocab


# Per size, for both towers: (hidden, intermediate, layers, heads), then the vision (image_size, patch_size).
_ARCHITECTURES = {
    # A 64 px image in 8x8 patches (64 patches: enough for captions to follow the image), two layers each.
    "tiny": (64, 128, 2, 4, 64, 8),
    # Between tiny and small: three times tiny's width and twice its depth, on the same 8 x 8 patch grid (a 128 px
    # image in 16 px patches). A teacher for a tiny student that still trains on a CPU in minutes.
    "mini": (192, 768, 4, 4, 128, 16),
    # A quarter of base's width and a third of its depth, same 384 px input: a CPU benchmark size.
    "small": (384, 1536, 4, 6, 384, 16),
    # Salesforce/blip-image-captioning-base exactly: ViT-B/16 at 384 px and a BERT-base decoder.
    "base": (768, 3072, 12, 12, 384, 16),
}


def blip_config(size: str) -> Any:
    """The ``BlipConfig`` for ``size``, its special-token ids consistent with ``build_vocab(size)``."""
    from transformers import BlipConfig

    if size not in _ARCHITECTURES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    hidden, intermediate, layers, heads, image_size, patch_size = _ARCHITECTURES[size]
    tower: dict[str, Any] = {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers}
    tower |= {"num_attention_heads": heads, "hidden_act": "gelu", "initializer_range": 0.02}
    vocab = build_vocab(size)
    sep = vocab.index("[SEP]")
    text = tower | {
        # [DEC] and [ENC] are added tokens right after the WordPiece vocabulary, as in BLIP-base (30522, 30523).
        "vocab_size": len(vocab) + 2,
        "bos_token_id": len(vocab),
        "sep_token_id": sep,
        # BLIP's generate() stops on sep_token_id; eos_token_id says the same to anything else reading the config.
        "eos_token_id": sep,
        "pad_token_id": vocab.index("[PAD]"),
        "max_position_embeddings": 512,
        "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "projection_dim": 768,
        "is_decoder": True,
        "use_cache": True,
        "tie_word_embeddings": True,
    }
    vision = tower | {"image_size": image_size, "patch_size": patch_size, "projection_dim": 512}
    vision |= {"layer_norm_eps": 1e-5, "attention_dropout": 0.0}
    return BlipConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=512,
        logit_scale_init_value=2.6592,
        image_text_hidden_size=256,
        initializer_factor=1.0,
        initializer_range=0.02,
    )


# Initialisation gains (relative to std 1/sqrt(fan_in)), tuned on 20 synthetic images; see _shape_weights.
_CROSS_QK_GAIN = 3.0  # sharp cross-attention: each step looks at a few patches, not their (uninformative) mean
_CROSS_V_GAIN = 0.7  # enough image in the residual stream to steer words, not so much that one word repeats
_WORD_GAIN = 3.0  # tied input/output embeddings: logits spread over a few nats, so choices are decisive
_POSITION_GAIN = 3.0  # text positions vary the decoder state step to step, against repeating a word
_VISION_POSITION_GAIN = 0.1  # patch content, not patch position, must dominate the image features
_SEP_POSITION = 12  # where [SEP] catches up with the best word: after "[DEC] a picture of" and about 8 words
_SEP_SLOPE = 1.5  # nats per position: [SEP] is ~10 nats down after 2 words and certain ~3 past _SEP_POSITION
_NEVER = -1e4  # LM-head bias of tokens never to generate (finite: float16 on GPU must not overflow)


def _shape_weights(model: Any, vocab: list[str], generator: torch.Generator) -> None:
    """Re-initialise every weight from ``generator`` so that captions follow the image and are never empty.

    transformers' init (std 0.02, zero-ish positions) gives near-uniform logits and image features that the
    decoder barely sees, so every image gets the same caption. Instead: std 1/sqrt(fan_in) everywhere (the
    image signal survives the vision layers), with the gains above on cross-attention, embeddings and positions.
    The LM-head bias bans every special and [unusedN] token (so decoded text is never empty; [SEP]'s is then set
    by ``_calibrate``) and lowers sub-word pieces and single characters (so captions read as whole words).
    """
    # A deep post-LN decoder forgets its inputs (word, position) under 3 x layers random residual branches, and
    # its captions loop on one word. Scaling every branch's output (self-attention, cross-attention, feed-forward)
    # by sqrt(2 / layers) keeps a 4- or 12-layer decoder's mix as in the 2-layer one the gains were tuned on.
    branch_gain = (2 / model.config.text_config.num_hidden_layers) ** 0.5
    gains = {
        ".crossattention.self.query.": _CROSS_QK_GAIN,
        ".crossattention.self.key.": _CROSS_QK_GAIN,
        ".crossattention.self.value.": _CROSS_V_GAIN,
        ".crossattention.output.dense.": _CROSS_V_GAIN,
        ".word_embeddings.": _WORD_GAIN,
        ".bert.embeddings.position_embeddings.": _POSITION_GAIN,
        "vision_model.embeddings.position_embedding": _VISION_POSITION_GAIN,
        "vision_model.embeddings.class_embedding": _VISION_POSITION_GAIN,
    }
    with torch.no_grad():
        # Sorted by name, so the draws from `generator` (hence the bytes written) depend only on the seed.
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if "norm" in name.lower() and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                # Embedding tables and the vision class/position parameters: per-vector width; else fan-in.
                fan_in = param.shape[-1] if "embedding" in name and "patch" not in name else param[0].numel()
                gain = next((g for key, g in gains.items() if key in name), 1.0)
                if name.startswith("text_decoder.bert.encoder.") and name.endswith(".output.dense.weight"):
                    gain *= branch_gain
                param.normal_(0.0, gain * fan_in**-0.5, generator=generator)
        bias = model.text_decoder.cls.predictions.bias
        for token_id, token in enumerate(vocab):
            if token.startswith("[") and len(token) > 1:
                bias[token_id] = _NEVER
            elif token.startswith("##"):
                bias[token_id] = -3.0
            elif len(token) == 1 and token != "a":
                bias[token_id] = -6.0
        bias[len(vocab) :] = _NEVER  # [DEC], [ENC]
    # In float64: float32 sums change with the thread count, and the calibrated values with them. Rounded back
    # to float32, float64 results are the same bytes for a seed however many threads ran them.
    model.double()
    _calibrate(model, vocab, generator)
    model.float()


def _calibrate(model: Any, vocab: list[str], generator: torch.Generator) -> None:
    """Two LM-head adjustments read off the decoder itself, on one random image and shuffled token sequences.

    Repeats: among hundreds of random embeddings some are, by chance, their own likeliest successor; beam
    search, which seeks likely sequences, finds them and repeats them to the end ("bus bus bus ..."). Each
    token's bias loses what its log-probability right after itself exceeds the median token's there.

    Length: a constant [SEP] logit ends every caption at once or never (beam scores are per-token means), and
    nothing else in a random model knows how long a caption is. But the decoder state encodes the position:
    fit (ridge least squares) [SEP]'s output embedding and bias so that its logit is the best token's plus
    _SEP_SLOPE nats per position past _SEP_POSITION. Captions then end after several words, at a length that
    varies with the image. [SEP] is never an input during generation, so its (tied) embedding row is free.
    """
    head = model.text_decoder.cls.predictions
    embeddings = model.text_decoder.bert.embeddings.word_embeddings.weight
    size = model.config.vision_config.image_size
    tokens = torch.tensor([i for i, t in enumerate(vocab) if not (t.startswith("[") and len(t) > 1)])
    column = torch.zeros(len(embeddings), dtype=torch.long)
    column[tokens] = torch.arange(len(tokens))
    # Every token three times, shuffled into 16-token continuations of "[DEC] a picture of".
    filler = tokens.repeat(3)[torch.randperm(3 * len(tokens), generator=generator)]
    filler = filler[: len(filler) // 16 * 16].view(-1, 16)
    prompt = [model.config.text_config.bos_token_id, vocab.index("a"), vocab.index("picture"), vocab.index("of")]
    ids = torch.cat([torch.tensor(prompt).expand(len(filler), -1), filler], dim=1)
    with torch.no_grad():
        pixels = torch.randn(1, 3, size, size, generator=generator, dtype=torch.float64)
        image = model.vision_model(pixel_values=pixels)[0]
        # A batch-1 image: cross-attention broadcasts it, so its keys and values are computed once, not per row.
        encoded = model.text_decoder.bert(input_ids=ids, encoder_hidden_states=image, is_decoder=True)
        hidden = head.transform(encoded.last_hidden_state)  # what the tied output embeddings are dotted with
        logprobs = (hidden[:, 4:] @ embeddings[tokens].T + head.bias[tokens]).log_softmax(dim=-1)
        own = logprobs.gather(-1, column[ids[:, 4:], None])[..., 0]
        excess = (own - logprobs.median(dim=-1).values).flatten()
        seen = column[ids[:, 4:]].flatten()
        counts = torch.bincount(seen, minlength=len(tokens)).clamp(min=1)
        head.bias[tokens] -= (torch.zeros_like(head.bias[tokens]).index_add_(0, seen, excess) / counts).clamp(min=0)
        # From index 3 (the prompt's last token, which predicts the first word) on.
        best = (hidden[:, 3:] @ embeddings[tokens].T + head.bias[tokens]).max(dim=-1).values
        position = torch.arange(3, ids.shape[1], dtype=hidden.dtype).expand(len(ids), -1)
        target = (best + _SEP_SLOPE * (position - _SEP_POSITION)).flatten()
        x = torch.cat([hidden[:, 3:].reshape(len(target), -1), target.new_ones(len(target), 1)], dim=1)
        fit = torch.linalg.solve(x.T @ x + torch.eye(x.shape[1], dtype=x.dtype), x.T @ target)
        sep = vocab.index("[SEP]")
        embeddings[sep] = fit[:-1]
        head.bias[sep] = fit[-1]


def _tokenizer(vocab: list[str]) -> Any:
    from transformers import BertTokenizer

    # As BLIP-base's tokenizer: BERT-uncased WordPiece, [DEC] as BOS (BLIP's generate() puts bos_token_id first),
    # [ENC] as an extra special token (BLIP's image-text encoders start with it).
    return BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        do_lower_case=True,
        bos_token="[DEC]",
        extra_special_tokens=["[ENC]"],
        model_max_length=512,
    )


def write_untrained_model(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised ``size`` BLIP captioner (weights, tokenizer, processor, marker) to ``out_dir``."""
    from transformers import BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    config = blip_config(size)
    vocab = build_vocab(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # transformers' own init draws from the global RNG: fork it, so the caller's random state is left alone.
    # That init is thrown away: every weight is then drawn again from a generator seeded with `seed`.
    with torch.random.fork_rng(devices=[]):
        model: Any = BlipForConditionalGeneration(config)
    model.eval()
    _shape_weights(model, vocab, torch.Generator().manual_seed(seed))
    model.save_pretrained(out)
    # safetensors writes its file 0600; give it the same permissions as the rest of the folder.
    (out / "model.safetensors").chmod((out / "config.json").stat().st_mode & 0o777)
    image_size = config.vision_config.image_size
    # BlipImageProcessor's defaults are BLIP's: bicubic resize, OpenAI CLIP mean/std; only the size varies.
    make_processor: Any = BlipProcessor  # its __init__ is untyped
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = make_processor(image_processor=image_processor, tokenizer=_tokenizer(vocab))
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)  # preprocessor_config.json, for readers older than v5
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    (out / UNTRAINED_MARKER).write_text(
        f"Random, untrained weights written by `captioner init-model` (size {size}, seed {seed}).\n"
        "Captions from this model are meaningless; use it for tests and benchmarks only.\n"
        + json.dumps({"size": size, "seed": seed})
        + "\n",
        encoding="utf-8",
    )
    return out
