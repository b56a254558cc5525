"""Image captioner: CNN encoder + LSTM decoder on synthetic two-object scenes.

Exported as two graphs so the decoding loop (greedy or beam) stays in the server:
- encoder: uint8 NHWC image -> image features and the initial LSTM state;
- decoder: one step, previous token + features + state -> next-token log-probs + new state.
The features are fed to the decoder at every step, so it can look at the image throughout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from export.base import (
    BuildContext,
    Built,
    GraphExport,
    TensorDecl,
    plot_curves,
    progress,
    set_threads,
)
from export.data.scenes import (
    BOS_INDEX,
    COLOURS,
    EOS_INDEX,
    IMAGE_SIZE,
    PAD_INDEX,
    RELATIONS,
    SHAPES,
    SUBJECT_RULE,
    VOCABULARY,
    Scenes,
    encode_captions,
    render_scenes,
)
from service.processing.captioning import beam_search_decode, greedy_decode

NAME = "captioner"
SPEC_VERSION = "1"

FEATURES = 128  # D
EMBED = 32
HIDDEN = 128  # H
LAYERS = 2  # L
MAX_LENGTH = 12  # decoding steps, <eos> included
TRAIN_SIZE = 12_000
VALID_SIZE = 1_000
TEST_SIZE = 2_000
HELDOUT_SAMPLE = 128
EPOCHS = 5
BATCH = 128
LEARNING_RATE = 4e-3
AUX_WEIGHT = 0.5
BEAM_SIZE = 3
PIXEL_MEAN, PIXEL_STD = 127.5, 63.75  # in graph: (x - 127.5) / 63.75
SPLITS = {"train": 1, "validation": 2, "test": 3}

EXTRA: dict[str, Any] = {
    "bos_index": BOS_INDEX,
    "eos_index": EOS_INDEX,
    "pad_index": PAD_INDEX,
    "max_length": MAX_LENGTH,
    "subject_rule": SUBJECT_RULE,
    "decoding": ["greedy", "beam"],
    "beam_size": BEAM_SIZE,
    "features_dim": FEATURES,
    "lstm_layers": LAYERS,
    "lstm_hidden": HIDDEN,
}


class Encoder(nn.Module):
    """uint8 NHWC RGB [B, 64, 64, 3] -> (features [B, D], h0 [B, L, H], c0 [B, L, H])."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, kernel, 2, kernel // 2, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU()]

        self.convs = nn.Sequential(
            *block(3, 16, 5),  # 32x32
            *block(16, 32, 3),  # 16x16
            *block(32, 64, 3),  # 8x8, flattened: keeps where the objects are
        )
        self.project = nn.Linear(64 * 8 * 8, FEATURES)
        self.init_h = nn.Linear(FEATURES, LAYERS * HIDDEN)
        self.init_c = nn.Linear(FEATURES, LAYERS * HIDDEN)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (image.permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_STD
        features = F.relu(self.project(self.convs(x).flatten(1)))
        h0 = torch.tanh(self.init_h(features)).unflatten(1, (LAYERS, HIDDEN))
        c0 = self.init_c(features).unflatten(1, (LAYERS, HIDDEN))
        return features, h0, c0


class Decoder(nn.Module):
    """LSTM over [token embedding; image features]; batch-first states [B, L, H]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCABULARY), EMBED)
        self.lstm = nn.LSTM(EMBED + FEATURES, HIDDEN, LAYERS, batch_first=True, dropout=0.1)
        self.out = nn.Linear(HIDDEN, len(VOCABULARY))

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens [B, T] -> logits [B, T, V], final h and c [B, L, H]."""
        steps = features.unsqueeze(1).expand(-1, tokens.shape[1], -1)
        x = torch.cat([self.embed(tokens), steps], dim=-1)
        state = (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())
        y, (h_n, c_n) = self.lstm(x, state)
        return self.out(y), h_n.transpose(0, 1), c_n.transpose(0, 1)


class DecoderStep(nn.Module):
    """Export wrapper: one step, tokens [B] -> (log_probs [B, V], h_out, c_out)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, h_out, c_out = self.decoder(tokens.unsqueeze(1), features, h, c)
        return F.log_softmax(logits[:, 0], dim=-1), h_out, c_out


class AttributeHeads(nn.Module):
    """Training only: classify each caption slot from the image features.

    The caption loss alone reaches the image slowly (the decoder first learns the grammar);
    these auxiliary losses make the encoder useful from the first steps. Not exported.
    """

    SIZES = (len(COLOURS), len(SHAPES), len(COLOURS), len(SHAPES), len(RELATIONS))

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, sum(self.SIZES))

    def forward(self, features: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """Sum of the slot cross-entropies; attributes int64 [B, 5] in SIZES order."""
        logits = self.linear(features).split(self.SIZES, dim=1)
        return sum(
            (F.cross_entropy(slot, attributes[:, i]) for i, slot in enumerate(logits)),
            start=torch.zeros(()),
        )


def slot_targets(scenes: Scenes) -> torch.Tensor:
    """int64 [N, 5]: subject colour, subject shape, object colour, object shape, relation."""
    columns = [
        scenes.colours[:, 0],
        scenes.shapes[:, 0],
        scenes.colours[:, 1],
        scenes.shapes[:, 1],
        scenes.relations,
    ]
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.int64))


class TorchSession:
    """Wraps an eval-mode module in the `.run` interface of an onnxruntime session."""

    def __init__(self, module: nn.Module, inputs: list[str], outputs: list[str]) -> None:
        self.module, self.inputs, self.outputs = module.eval(), inputs, outputs

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            got = self.module(*(torch.from_numpy(np.asarray(feed[n])) for n in self.inputs))
        by_name = dict(zip(self.outputs, got))
        return [by_name[n].numpy() for n in (output_names or self.outputs)]


def split_seed(seed: int, split: str) -> int:
    """Independent, reproducible seed per split (held-out scenes never share the train seed)."""
    return int(np.random.SeedSequence([seed, SPLITS[split]]).generate_state(1)[0])


def teacher_forcing(scenes: Scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder inputs [N, T] starting with <bos>, targets [N, T] ending with <eos>, padded)."""
    targets = encode_captions(scenes.captions, MAX_LENGTH)
    inputs = np.concatenate([np.full((len(targets), 1), BOS_INDEX), targets[:, :-1]], axis=1)
    inputs[inputs == EOS_INDEX] = PAD_INDEX
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def trim(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing all-pad steps (captions are at most 9 tokens with <eos>)."""
    used = int((targets != PAD_INDEX).sum(dim=1).max())
    return inputs[:, :used], targets[:, :used]


def sequence_loss(
    encoder: Encoder,
    decoder: Decoder,
    images: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean token cross-entropy (pad ignored), correct non-pad tokens, and the features."""
    features, h, c = encoder(images)
    logits, _, _ = decoder(inputs, features, h, c)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_INDEX)
    mask = targets != PAD_INDEX
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss, correct, features


def evaluate_loss(encoder: Encoder, decoder: Decoder, scenes: Scenes) -> tuple[float, float]:
    """Teacher-forced (loss, token accuracy) on scenes."""
    encoder.eval()
    decoder.eval()
    inputs, targets = trim(*teacher_forcing(scenes))
    images = torch.from_numpy(scenes.images)
    total, correct, count = 0.0, 0, int((targets != PAD_INDEX).sum())
    with torch.no_grad():
        for start in range(0, len(scenes), 512):
            part = slice(start, start + 512)
            loss, right, _ = sequence_loss(
                encoder, decoder, images[part], inputs[part], targets[part]
            )
            tokens = int((targets[part] != PAD_INDEX).sum())
            total += float(loss) * tokens
            correct += int(right)
    return total / count, correct / count


def sessions(encoder: Encoder, decoder: Decoder) -> tuple[TorchSession, TorchSession]:
    return (
        TorchSession(encoder, ["image"], ["features", "h0", "c0"]),
        TorchSession(
            DecoderStep(decoder), ["tokens", "features", "h", "c"], ["log_probs", "h_out", "c_out"]
        ),
    )


def decode(encoder: Encoder, decoder: Decoder, images: np.ndarray, beam: bool = False) -> list[str]:
    """Captions from the torch modules through the same decoding code the server runs."""
    enc, dec = sessions(encoder, decoder)
    out: list[str] = []
    for start in range(0, len(images), 500):
        part = images[start : start + 500]
        if beam:
            out += beam_search_decode(enc, dec, part, EXTRA, VOCABULARY, beam_size=BEAM_SIZE)
        else:
            out += greedy_decode(enc, dec, part, EXTRA, VOCABULARY)
    return out


def exact_match(predicted: list[str], truth: np.ndarray) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def slot_accuracy(predicted: list[str], scenes: Scenes) -> dict[str, float]:
    """Per-slot accuracy of decoded captions: "a C S <relation...> a C S"."""
    hits = dict.fromkeys(
        ("subject_colour", "subject_shape", "relation", "object_colour", "object_shape"), 0
    )
    for text, colours, shapes, relation in zip(
        predicted, scenes.colours, scenes.shapes, scenes.relations
    ):
        words = text.split()
        hits["subject_colour"] += words[1:2] == [COLOURS[colours[0]]]
        hits["subject_shape"] += words[2:3] == [SHAPES[shapes[0]]]
        hits["relation"] += " ".join(words[3:-3]) == RELATIONS[relation]
        hits["object_colour"] += words[-2:-1] == [COLOURS[colours[1]]]
        hits["object_shape"] += words[-1:] == [SHAPES[shapes[1]]]
    return {f"{k}_accuracy_greedy": v / len(predicted) for k, v in hits.items()}


def pair_coverage(scenes: Scenes) -> int:
    """How many colour-shape pairs occur both as subject and as object."""
    pairs = scenes.colours * len(SHAPES) + scenes.shapes
    return len(set(pairs[:, 0].tolist()) & set(pairs[:, 1].tolist()))


def train(
    encoder: Encoder, decoder: Decoder, train_set: Scenes, valid_set: Scenes, seed: int
) -> dict[str, list[float]]:
    """Teacher forcing, Adam + one-cycle schedule; per-epoch curves."""
    inputs, targets = teacher_forcing(train_set)
    images = torch.from_numpy(train_set.images)
    attributes = slot_targets(train_set)
    heads = AttributeHeads()
    params = [*encoder.parameters(), *decoder.parameters(), *heads.parameters()]
    optimiser = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=1e-4)
    steps_per_epoch = -(-len(train_set) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    curves: dict[str, list[float]] = {
        "train_loss": [],
        "train_aux_loss": [],
        "valid_loss": [],
        "valid_token_acc": [],
        "valid_exact_greedy": [],
    }
    for epoch in range(EPOCHS):
        encoder.train()
        decoder.train()
        order = torch.randperm(len(train_set), generator=generator)
        total, total_aux, seen = 0.0, 0.0, 0
        bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{EPOCHS}", unit="batch")
        for step in bar:
            index = order[step * BATCH : (step + 1) * BATCH]
            loss, _, features = sequence_loss(
                encoder, decoder, images[index], *trim(inputs[index], targets[index])
            )
            aux = heads(features, attributes[index])
            optimiser.zero_grad(set_to_none=True)
            (loss + AUX_WEIGHT * aux).backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
            total_aux += aux.item() * len(index)
            seen += len(index)
            bar.set_postfix(
                loss=f"{total / seen:.4f}", aux=f"{total_aux / seen:.3f}", refresh=False
            )
        bar.close()
        valid_loss, valid_acc = evaluate_loss(encoder, decoder, valid_set)
        valid_exact = exact_match(decode(encoder, decoder, valid_set.images), valid_set.captions)
        curves["train_loss"].append(total / seen)
        curves["train_aux_loss"].append(total_aux / seen)
        curves["valid_loss"].append(valid_loss)
        curves["valid_token_acc"].append(valid_acc)
        curves["valid_exact_greedy"].append(valid_exact)
        print(
            f"  epoch {epoch + 1}: train loss {total / seen:.4f}, valid loss {valid_loss:.4f}, "
            f"token acc {valid_acc:.4f}, exact (greedy) {valid_exact:.4f}",
            flush=True,
        )
    encoder.eval()
    decoder.eval()
    return curves


def parity_cases(
    encoder: Encoder, decoder: Decoder, test_set: Scenes, rng: np.random.Generator
) -> tuple[list[tuple[str, list[np.ndarray]]], list[tuple[str, list[np.ndarray]]]]:
    """Real held-out images/states and random inputs at batch 1, 5-8 and 24-32."""
    images = test_set.images
    encoder_cases: list[tuple[str, list[np.ndarray]]] = []
    for n in (8, 1, 32):
        encoder_cases.append((f"heldout scenes batch {n}", [images[:n].copy()]))
    for n in (1, 5, 24):
        noise = rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        encoder_cases.append((f"random pixels batch {n}", [noise]))

    decoder_cases: list[tuple[str, list[np.ndarray]]] = []
    inputs, _ = teacher_forcing(test_set)
    with torch.no_grad():
        features, h, c = encoder(torch.from_numpy(images[:32]))
        # Mid-caption state: the real state after feeding <bos> and the first three words.
        _, h3, c3 = decoder(inputs[:32, :4], features, h, c)
    for n in (8, 1, 32):
        bos = np.full(n, BOS_INDEX, dtype=np.int64)
        decoder_cases.append(
            (
                f"heldout first step batch {n}",
                [bos, features[:n].numpy(), h[:n].numpy(), c[:n].numpy()],
            )
        )
    decoder_cases.append(
        (
            "heldout step 4 batch 16",
            [
                inputs[:16, 4].numpy().copy(),
                features[:16].numpy(),
                h3[:16].numpy().copy(),
                c3[:16].numpy().copy(),
            ],
        )
    )
    for n in (1, 5, 24):
        decoder_cases.append(
            (
                f"random inputs batch {n}",
                [
                    rng.integers(0, len(VOCABULARY), n).astype(np.int64),
                    np.abs(rng.normal(0, 1, (n, FEATURES))).astype(np.float32),
                    rng.uniform(-1, 1, (n, LAYERS, HIDDEN)).astype(np.float32),
                    rng.normal(0, 1, (n, LAYERS, HIDDEN)).astype(np.float32),
                ],
            )
        )
    return encoder_cases, decoder_cases


def build(ctx: BuildContext) -> Built:
    set_threads()
    ctx.seed_everything()
    started = time.perf_counter()
    seeds = {split: split_seed(ctx.seed, split) for split in SPLITS}
    sizes = {"train": TRAIN_SIZE, "validation": VALID_SIZE, "test": TEST_SIZE}
    scenes = {
        split: render_scenes(sizes[split], seeds[split], show_progress=True) for split in SPLITS
    }
    train_set, valid_set, test_set = scenes["train"], scenes["validation"], scenes["test"]
    coverage = pair_coverage(train_set)
    if coverage != len(COLOURS) * len(SHAPES):
        raise RuntimeError(f"training scenes cover only {coverage} colour-shape pairs")
    render_seconds = time.perf_counter() - started

    encoder, decoder = Encoder(), Decoder()
    curves = train(encoder, decoder, train_set, valid_set, ctx.seed)
    train_seconds = time.perf_counter() - started - render_seconds

    test_loss, token_acc = evaluate_loss(encoder, decoder, test_set)
    greedy = decode(encoder, decoder, test_set.images)
    beam = decode(encoder, decoder, test_set.images, beam=True)
    metrics = {
        "exact_match_greedy": exact_match(greedy, test_set.captions),
        "exact_match_beam": exact_match(beam, test_set.captions),
        "token_accuracy": token_acc,
        "test_loss": test_loss,
        **slot_accuracy(greedy, test_set),
    }
    print(f"  held-out: {metrics}", flush=True)

    curve_path = plot_curves(
        Path(ctx.workdir) / "training_curve.png",
        "captioner: teacher-forced loss; validation accuracy",
        {
            "train caption loss": curves["train_loss"],
            "train auxiliary slot loss": curves["train_aux_loss"],
            "validation caption loss": curves["valid_loss"],
        },
        secondary={
            "validation token accuracy": curves["valid_token_acc"],
            "validation exact match (greedy)": curves["valid_exact_greedy"],
        },
    )
    encoder_cases, decoder_cases = parity_cases(
        encoder, decoder, test_set, np.random.default_rng(ctx.seed)
    )
    batch_dims: list[int | str] = ["batch", LAYERS, HIDDEN]
    graphs = {
        "encoder": GraphExport(
            module=encoder.eval(),
            inputs=[
                TensorDecl(
                    "image",
                    "UINT8",
                    ["batch", IMAGE_SIZE, IMAGE_SIZE, 3],
                    "RGB pixels, NHWC, 0-255 (cast and normalised in the graph)",
                )
            ],
            outputs=[
                TensorDecl(
                    "features",
                    "FP32",
                    ["batch", FEATURES],
                    "image features, fed to every decoder step",
                ),
                TensorDecl("h0", "FP32", batch_dims, "initial LSTM hidden state, batch-first"),
                TensorDecl("c0", "FP32", batch_dims, "initial LSTM cell state, batch-first"),
            ],
            parity_cases=encoder_cases,
        ),
        "decoder": GraphExport(
            module=DecoderStep(decoder).eval(),
            inputs=[
                TensorDecl("tokens", "INT64", ["batch"], "previous token id (<bos> first)"),
                TensorDecl("features", "FP32", ["batch", FEATURES], "encoder features"),
                TensorDecl("h", "FP32", batch_dims, "LSTM hidden state (h0, then h_out)"),
                TensorDecl("c", "FP32", batch_dims, "LSTM cell state (c0, then c_out)"),
            ],
            outputs=[
                TensorDecl(
                    "log_probs",
                    "FP32",
                    ["batch", len(VOCABULARY)],
                    "log-softmax over the vocabulary for the next token",
                ),
                TensorDecl("h_out", "FP32", batch_dims, "next hidden state"),
                TensorDecl("c_out", "FP32", batch_dims, "next cell state"),
            ],
            parity_cases=decoder_cases,
        ),
    }
    sample = slice(0, HELDOUT_SAMPLE)
    return Built(
        task="image-captioning",
        graphs=graphs,
        metrics=metrics,
        data={
            "source": "synthetic scenes rendered here (export/data/scenes.py, numpy)",
            "license": "generated here; no third-party data",
            "splits": {split: {"size": sizes[split], "seed": seeds[split]} for split in SPLITS},
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "relations": list(RELATIONS),
            "caption_grammar": "a <colour> <shape> <relation> a <colour> <shape>",
            "subject_rule": SUBJECT_RULE,
            "colour_shape_pairs_in_training": coverage,
            "notes": (
                "64x64 RGB, two non-overlapping objects on a dark background with uniform "
                "per-pixel noise; colour, position and size jitter. Left/right scenes: centres "
                ">= 20 px apart horizontally, <= 5 px vertically; above/below the other way "
                "round. Validation and test scenes come from their own seeds, so the model "
                "never saw them; every colour-shape pair appears in training as subject and "
                "as object (held-out pairs are not evaluated)."
            ),
            "render_seconds": round(render_seconds, 1),
        },
        vocabulary=list(VOCABULARY),
        preprocessing={
            "image_size": [IMAGE_SIZE, IMAGE_SIZE],
            "layout": "NHWC",
            "dtype": "uint8",
            "channels": "RGB",
            "resize": "bilinear resize other sizes to 64x64 RGB before the encoder "
            "(service.processing.captioning.resize_images)",
            "normalisation": "in graph: cast to float, NHWC->NCHW, (x - 127.5) / 63.75",
        },
        extra=dict(EXTRA),
        heldout={
            "image": test_set.images[sample].copy(),
            "caption": test_set.captions[sample].copy(),
            "torch_greedy": np.array(greedy[:HELDOUT_SAMPLE], dtype=np.str_),
        },
        training={
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "optimiser": f"AdamW lr {LEARNING_RATE} one-cycle, weight decay 1e-4, clip 1.0",
            "loss": (
                "teacher-forced token cross-entropy, <pad> ignored; plus "
                f"{AUX_WEIGHT} x auxiliary slot classification from the encoder features "
                "(training only, not exported)"
            ),
            "final_train_loss": curves["train_loss"][-1],
            "final_valid_loss": curves["valid_loss"][-1],
            "fit_seconds": round(train_seconds, 1),
            "architecture": (
                f"CNN (3 stride-2 conv+BN to 8x8x64) -> FC {FEATURES}; init state FC; "
                f"LSTM {LAYERS}x{HIDDEN} on [embed {EMBED}; features] each step"
            ),
        },
        files={"training_curve.png": curve_path},
    )
