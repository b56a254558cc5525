"""Image captioner: CNN encoder + LSTM decoder on synthetic two-object scenes.

Exported as two graphs so the decoding loop (greedy or beam) stays in the server:
- encoder: uint8 NHWC image -> image features and the initial LSTM state;
- decoder: one step, previous token + features + state -> next-token log-probs + new state.
The features are fed to the decoder at every step, so it can look at the image throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    INVERSE,
    PAD_INDEX,
    RELATION_RULE,
    RELATIONS,
    SHAPES,
    VOCABULARY,
    Scenes,
    encode_captions,
    render_scenes,
)
from export.data.scenes_pillow import PillowScenes, render_pillow_scenes
from export.ood import (
    OUT_OF_DOMAIN_NOTES,
    MahalanobisDistance,
    channel_statistics,
    choose_threshold,
    expected_calibration_error,
    fit_gaussians,
    flag_rates,
    out_of_domain_images,
)
from service.processing.captioning import (
    beam_search_decode,
    greedy_decode,
    greedy_decode_scored,
)

NAME = "captioner"
SPEC_VERSION = "3"

FEATURES = 128  # D
EMBED = 32
HIDDEN = 128  # H
LAYERS = 2  # L
MAX_LENGTH = 12  # decoding steps, <eos> included
TRAIN_SIZE = 12_000  # fresh scenes every epoch
VALID_SIZE = 1_000
TEST_SIZE = 2_000
SECOND_SIZE = 2_000
HELDOUT_SAMPLE = 128
EPOCHS = 8
BATCH = 128
LEARNING_RATE = 4e-3
AUX_WEIGHT = 0.5
BEAM_SIZE = 3
PIXEL_MEAN, PIXEL_STD = 127.5, 63.75  # in graph: (x - 127.5) / 63.75
SPLITS = {
    "train": 1,
    "validation": 2,
    "test": 3,
    "second_renderer": 4,
    "second_validation": 5,
    "out_of_domain": 6,
}
DOMAIN_FIT_SIZE = 6_000
DOMAIN_QUANTILE = 0.995
OUT_OF_DOMAIN_SIZE = 300  # per source

EXTRA: dict[str, Any] = {
    "bos_index": BOS_INDEX,
    "eos_index": EOS_INDEX,
    "pad_index": PAD_INDEX,
    "max_length": MAX_LENGTH,
    "relation_rule": RELATION_RULE,
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

        def block(cin: int, cout: int, kernel: int, stride: int = 2) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU()]

        self.convs = nn.Sequential(
            *block(3, 32, 5),  # 32x32
            *block(32, 64, 3),  # 16x16
            *block(64, 64, 3, stride=1),  # 16x16: shapes of small objects
            *block(64, 96, 3),  # 8x8, flattened: keeps where the objects are
        )
        self.project = nn.Linear(96 * 8 * 8, FEATURES)
        self.init_h = nn.Linear(FEATURES, LAYERS * HIDDEN)
        self.init_c = nn.Linear(FEATURES, LAYERS * HIDDEN)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, h0, c0, _ = self.encode(image)
        return features, h0, c0

    def encode(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, h0, c0, statistics [B, 2 x 256]): the per-channel spatial mean and
        standard deviation of every conv block's output, what the domain verdict measures."""
        x = (image.permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_STD
        statistics: list[torch.Tensor] = []
        for layer in self.convs:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                statistics += channel_statistics(x)
        features = F.relu(self.project(x.flatten(1)))
        h0 = torch.tanh(self.init_h(features)).unflatten(1, (LAYERS, HIDDEN))
        c0 = self.init_c(features).unflatten(1, (LAYERS, HIDDEN))
        return features, h0, c0, torch.cat(statistics, dim=1)


class ServedEncoder(nn.Module):
    """The exported encoder: the training encoder's outputs plus `domain_distance`."""

    def __init__(self, encoder: Encoder, domain: MahalanobisDistance) -> None:
        super().__init__()
        self.encoder, self.domain = encoder, domain

    def forward(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features, h0, c0, statistics = self.encoder.encode(image)
        return features, h0, c0, self.domain(statistics)


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
        """Per-scene sum of the slot cross-entropies [B, K] for attributes int64 [B, K, 5]
        (K orderings, slots in SIZES order)."""
        logits = self.linear(features).split(self.SIZES, dim=1)
        total = torch.zeros(attributes.shape[:2])
        for i, slot in enumerate(logits):
            per = -F.log_softmax(slot, dim=1).gather(1, attributes[:, :, i])
            total = total + per
        return total


def slot_targets(scenes: Scenes) -> torch.Tensor:
    """int64 [N, 2, 5]: per ordering (A first, B first), the first object's colour and shape,
    the second's, and the relation of the first to the second."""
    c, sh, r = scenes.colours, scenes.shapes, scenes.relations
    first = np.stack([c[:, 0], sh[:, 0], c[:, 1], sh[:, 1], r], axis=1)
    second = np.stack([c[:, 1], sh[:, 1], c[:, 0], sh[:, 0], np.asarray(INVERSE)[r]], axis=1)
    return torch.from_numpy(np.stack([first, second], axis=1).astype(np.int64))


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


def teacher_forcing(captions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """captions [N, K] -> (decoder inputs [N, K, T] starting with <bos>, targets [N, K, T]
    ending with <eos>, padded), one row per ordering."""
    n, k = captions.shape
    targets = encode_captions(captions.reshape(-1), MAX_LENGTH)
    inputs = np.concatenate([np.full((len(targets), 1), BOS_INDEX), targets[:, :-1]], axis=1)
    inputs[inputs == EOS_INDEX] = PAD_INDEX
    return (
        torch.from_numpy(inputs.reshape(n, k, MAX_LENGTH)),
        torch.from_numpy(targets.reshape(n, k, MAX_LENGTH)),
    )


def trim(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing all-pad steps (captions are at most 9 tokens with <eos>)."""
    used = int((targets != PAD_INDEX).sum(dim=-1).max())
    return inputs[..., :used], targets[..., :used]


def orderings_loss(
    encoder: Encoder,
    decoder: Decoder,
    images: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    heads: AttributeHeads | None = None,
    attributes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss that accepts either ordering of a caption: per scene, the smaller over its K
    orderings of (mean token cross-entropy + AUX_WEIGHT x slot loss), averaged over scenes.

    inputs/targets [B, K, T]. Returns (loss, caption loss of the chosen ordering [B], the chosen
    ordering [B]).
    """
    b, k, t = targets.shape
    features, h, c = encoder(images)
    repeat = (k, *[1] * (features.dim() - 1))
    tokens = inputs.transpose(0, 1).reshape(k * b, t)  # ordering-major: [K * B, T]
    logits, _, _ = decoder(tokens, features.repeat(repeat), h.repeat(k, 1, 1), c.repeat(k, 1, 1))
    flat = targets.transpose(0, 1).reshape(k * b, t)
    per_token = F.cross_entropy(
        logits.flatten(0, 1), flat.flatten(), ignore_index=PAD_INDEX, reduction="none"
    ).view(k * b, t)
    counts = (flat != PAD_INDEX).sum(dim=1).clamp(min=1)
    caption = (per_token.sum(dim=1) / counts).view(k, b).transpose(0, 1)  # [B, K]
    total = caption
    if heads is not None and attributes is not None:
        total = caption + AUX_WEIGHT * heads(features, attributes)
    best, chosen = total.min(dim=1)
    return best.mean(), caption.gather(1, chosen[:, None])[:, 0], chosen


def evaluate_loss(encoder: Encoder, decoder: Decoder, scenes: Scenes) -> float:
    """Teacher-forced caption loss of the better ordering, averaged over scenes."""
    encoder.eval()
    decoder.eval()
    inputs, targets = trim(*teacher_forcing(scenes.captions))
    images = torch.from_numpy(scenes.images)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(scenes), 512):
            part = slice(start, start + 512)
            _, caption, _ = orderings_loss(
                encoder, decoder, images[part], inputs[part], targets[part]
            )
            total += float(caption.sum())
    return total / len(scenes)


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


def exact_match(predicted: list[str], captions: np.ndarray) -> float:
    """Share of predictions equal to one of the scene's correct captions (captions [N, K])."""
    return float(np.mean([p in set(row.tolist()) for p, row in zip(predicted, captions)]))


SLOTS = ("first_colour", "first_shape", "relation", "second_colour", "second_shape")


def slot_accuracy(predicted: list[str], captions: np.ndarray) -> dict[str, float]:
    """Per-slot accuracy of decoded captions against the ordering they match best."""
    hits = dict.fromkeys(SLOTS, 0)

    def slots(text: str) -> list[str]:
        words = text.split()
        return [*words[1:3], " ".join(words[3:-3]), *words[-2:]]

    for text, row in zip(predicted, captions):
        got = slots(text)
        best = max(([g == w for g, w in zip(got, slots(str(truth)))] for truth in row), key=sum)
        for name, hit in zip(SLOTS, best):
            hits[name] += hit
    return {f"{k}_accuracy_greedy": v / len(predicted) for k, v in hits.items()}


def pair_coverage(scenes: Scenes) -> int:
    """How many colour-shape pairs occur both as subject and as object."""
    pairs = scenes.colours * len(SHAPES) + scenes.shapes
    return len(set(pairs[:, 0].tolist()) & set(pairs[:, 1].tolist()))


def train(
    encoder: Encoder,
    decoder: Decoder,
    epoch_scenes: Callable[[int], Scenes],
    valid_set: Scenes,
    seed: int,
) -> dict[str, list[float]]:
    """Teacher forcing on fresh scenes every epoch, AdamW + one-cycle; per-epoch curves."""
    heads = AttributeHeads()
    params = [*encoder.parameters(), *decoder.parameters(), *heads.parameters()]
    optimiser = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=1e-4)
    steps_per_epoch = -(-TRAIN_SIZE // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    curves: dict[str, list[float]] = {
        "train_loss": [],
        "train_caption_loss": [],
        "valid_loss": [],
        "valid_exact_greedy": [],
    }
    for epoch in range(EPOCHS):
        train_set = epoch_scenes(epoch)
        inputs, targets = teacher_forcing(train_set.captions)
        images = torch.from_numpy(train_set.images)
        attributes = slot_targets(train_set)
        encoder.train()
        decoder.train()
        order = torch.randperm(len(train_set), generator=generator)
        total, total_caption, seen = 0.0, 0.0, 0
        bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{EPOCHS}", unit="batch")
        for step in bar:
            index = order[step * BATCH : (step + 1) * BATCH]
            loss, caption, _ = orderings_loss(
                encoder,
                decoder,
                images[index],
                *trim(inputs[index], targets[index]),
                heads=heads,
                attributes=attributes[index],
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
            total_caption += float(caption.detach().sum())
            seen += len(index)
            bar.set_postfix(
                loss=f"{total / seen:.4f}", caption=f"{total_caption / seen:.4f}", refresh=False
            )
        bar.close()
        valid_loss = evaluate_loss(encoder, decoder, valid_set)
        valid_exact = exact_match(decode(encoder, decoder, valid_set.images), valid_set.captions)
        curves["train_loss"].append(total / seen)
        curves["train_caption_loss"].append(total_caption / seen)
        curves["valid_loss"].append(valid_loss)
        curves["valid_exact_greedy"].append(valid_exact)
        print(
            f"  epoch {epoch + 1}: train loss {total / seen:.4f} (caption "
            f"{total_caption / seen:.4f}), valid caption loss {valid_loss:.4f}, "
            f"exact (greedy, either ordering) {valid_exact:.4f}",
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
    inputs, _ = teacher_forcing(test_set.captions)
    inputs = inputs[:, 0]
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


def domain_statistics(encoder: Encoder, images: np.ndarray) -> np.ndarray:
    """The conv statistics the domain verdict measures, [N, 512]."""
    encoder.eval()
    with torch.no_grad():
        return np.concatenate(
            [
                encoder.encode(torch.from_numpy(images[i : i + 512]))[3].numpy()
                for i in range(0, len(images), 512)
            ]
        )


def fit_domain(
    encoder: Encoder, seed: int, valid_set: Scenes, test_set: Scenes, second: PillowScenes
) -> tuple[MahalanobisDistance, dict[str, Any]]:
    """The domain verdict: a Gaussian fitted to the conv statistics of fresh training-renderer
    scenes; the threshold a quantile of in-domain validation scenes of both renderers (own
    seeds); measured on held-out scenes of both renderers and on out-of-domain images."""
    fit = render_scenes(DOMAIN_FIT_SIZE, epoch_seed(seed, EPOCHS))
    domain = MahalanobisDistance(*fit_gaussians(domain_statistics(encoder, fit.images)))

    def distances(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return domain(torch.from_numpy(domain_statistics(encoder, images))).numpy()

    second_valid = render_pillow_scenes(VALID_SIZE // 2, split_seed(seed, "second_validation"))
    validation = np.concatenate([distances(valid_set.images), distances(second_valid.images)])
    threshold = choose_threshold(validation, DOMAIN_QUANTILE)
    own, other = distances(test_set.images), distances(second.images)
    sources = out_of_domain_images(IMAGE_SIZE, split_seed(seed, "out_of_domain"))
    measured = flag_rates(
        threshold,
        np.concatenate([own, other]),
        {name: distances(images) for name, images in sources.items()},
    )
    measured["flagged_training_renderer"] = float(np.mean(own > threshold))
    measured["flagged_second_renderer"] = float(np.mean(other > threshold))
    print(f"  domain verdict: threshold {threshold:.3f}, {measured}", flush=True)
    return domain, {
        "output": "encoder.domain_distance",
        "threshold": round(threshold, 6),
        "method": (
            "squared Mahalanobis distance (per dimension) of the encoder's per-channel conv "
            "statistics (spatial mean and std of each block) to a Gaussian fitted on "
            f"{DOMAIN_FIT_SIZE} fresh training scenes (shared covariance shrunk 5 %)"
        ),
        "chosen_on": (
            f"the {DOMAIN_QUANTILE:.1%} quantile of in-domain validation scenes: "
            f"{VALID_SIZE} of the training renderer and {VALID_SIZE // 2} of the second "
            "renderer (own seeds); no out-of-domain input is used to choose it"
        ),
        "measured": measured,
        "out_of_domain_sources": {
            name: f"{len(images)} {OUT_OF_DOMAIN_NOTES[name]}" for name, images in sources.items()
        },
    }


def calibration_error(
    encoder: Encoder, decoder: Decoder, test_set: Scenes, second: PillowScenes
) -> float:
    """Expected calibration error of the answer's confidence (the greedy caption's probability,
    exp(score)) against exact match, on held-out scenes of both renderers."""
    enc, dec = sessions(encoder, decoder)
    confidence, correct = [], []
    for scenes in (test_set, second):
        scored = greedy_decode_scored(enc, dec, scenes.images, EXTRA, VOCABULARY)
        confidence += [float(np.exp(score)) for _, score in scored]
        correct += [text in set(row) for (text, _), row in zip(scored, scenes.captions.tolist())]
    return expected_calibration_error(np.array(confidence), np.array(correct))


def epoch_seed(seed: int, epoch: int) -> int:
    """The training scenes of one epoch: fresh every epoch, never a held-out split's seed."""
    return int(np.random.SeedSequence([seed, SPLITS["train"], epoch]).generate_state(1)[0])


def build(ctx: BuildContext) -> Built:
    set_threads()
    ctx.seed_everything()
    started = time.perf_counter()
    seeds = {split: split_seed(ctx.seed, split) for split in SPLITS}
    seeds["second_renderer"] = split_seed(ctx.seed, "second_renderer")
    valid_set = render_scenes(VALID_SIZE, seeds["validation"])
    test_set = render_scenes(TEST_SIZE, seeds["test"])
    second = render_pillow_scenes(SECOND_SIZE, seeds["second_renderer"])
    coverage: list[int] = []

    def epoch_scenes(epoch: int) -> Scenes:
        scenes = render_scenes(TRAIN_SIZE, epoch_seed(ctx.seed, epoch))
        coverage.append(pair_coverage(scenes))
        if coverage[-1] != len(COLOURS) * len(SHAPES):
            raise RuntimeError(f"epoch {epoch} scenes cover only {coverage[-1]} pairs")
        return scenes

    encoder, decoder = Encoder(), Decoder()
    curves = train(encoder, decoder, epoch_scenes, valid_set, ctx.seed)
    train_seconds = time.perf_counter() - started

    test_loss = evaluate_loss(encoder, decoder, test_set)
    greedy = decode(encoder, decoder, test_set.images)
    beam = decode(encoder, decoder, test_set.images, beam=True)
    second_greedy = decode(encoder, decoder, second.images)
    metrics = {
        "exact_match_greedy": exact_match(greedy, test_set.captions),
        "exact_match_beam": exact_match(beam, test_set.captions),
        "exact_match_second_renderer": exact_match(second_greedy, second.captions),
        "test_loss": test_loss,
        **slot_accuracy(greedy, test_set.captions),
    }
    domain, verdict = fit_domain(encoder, ctx.seed, valid_set, test_set, second)
    metrics |= {
        "in_domain_flagged": verdict["measured"]["in_domain_flagged"],
        "second_renderer_flagged": verdict["measured"]["flagged_second_renderer"],
        "out_of_domain_flagged": verdict["measured"]["out_of_domain_flagged"],
        "confidence_ece": calibration_error(encoder, decoder, test_set, second),
    }
    print(f"  held-out: {metrics}", flush=True)

    curve_path = plot_curves(
        Path(ctx.workdir) / "training_curve.png",
        "captioner: teacher-forced loss; validation accuracy",
        {
            "train loss (caption + auxiliary slots)": curves["train_loss"],
            "train caption loss": curves["train_caption_loss"],
            "validation caption loss": curves["valid_loss"],
        },
        secondary={"validation exact match (greedy)": curves["valid_exact_greedy"]},
    )
    encoder_cases, decoder_cases = parity_cases(
        encoder, decoder, test_set, np.random.default_rng(ctx.seed)
    )
    batch_dims: list[int | str] = ["batch", LAYERS, HIDDEN]
    graphs = {
        "encoder": GraphExport(
            module=ServedEncoder(encoder, domain).eval(),
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
                TensorDecl(
                    "domain_distance",
                    "FP32",
                    ["batch"],
                    "Mahalanobis distance of the conv statistics to the training scenes "
                    "(extra.domain.threshold: above it, not a scene of this grammar)",
                ),
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
            "second_renderer": (
                "export/data/scenes_pillow.py: Pillow ImageDraw, 4x supersampled, its own "
                "palette, jitter, layout and noise; written from the caption grammar alone, "
                "without reading the training renderer; never used for training"
            ),
            "license": "generated here; no third-party data",
            "splits": {
                "train": {
                    "size": f"{TRAIN_SIZE} fresh scenes per epoch, {EPOCHS} epochs",
                    "seed": "SeedSequence([seed, 1, epoch])",
                },
                "validation": {"size": VALID_SIZE, "seed": seeds["validation"]},
                "test": {"size": TEST_SIZE, "seed": seeds["test"]},
                "second_renderer": {"size": SECOND_SIZE, "seed": seeds["second_renderer"]},
            },
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "relations": list(RELATIONS),
            "caption_grammar": "a <colour> <shape> <relation> a <colour> <shape>",
            "relation_rule": RELATION_RULE,
            "colour_shape_pairs_per_epoch": min(coverage),
            "notes": (
                "64x64 RGB, two non-overlapping objects; bounding radius 5-15 px each, free "
                "positions, squares and triangles rotated up to 15 degrees, hard-edged or "
                "anti-aliased, tinted gradient backgrounds, uniform or Gaussian noise. Either "
                "ordering of a caption is correct: training takes the smaller loss of the two, "
                "scoring accepts both. Validation, test and second-renderer scenes come from "
                "their own seeds, so the model never saw them."
            ),
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
        extra={**EXTRA, "domain": verdict},
        heldout={
            "image": test_set.images[sample].copy(),
            "caption": test_set.captions[sample, 0].copy(),
            "caption_other": test_set.captions[sample, 1].copy(),
            "torch_greedy": np.array(greedy[:HELDOUT_SAMPLE], dtype=np.str_),
        },
        training={
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "optimiser": f"AdamW lr {LEARNING_RATE} one-cycle, weight decay 1e-4, clip 1.0",
            "loss": (
                "per scene, the smaller over the caption's two orderings of: teacher-forced "
                f"token cross-entropy (<pad> ignored) + {AUX_WEIGHT} x auxiliary slot "
                "classification from the encoder features (training only, not exported)"
            ),
            "final_train_loss": curves["train_loss"][-1],
            "final_valid_loss": curves["valid_loss"][-1],
            "fit_seconds": round(train_seconds, 1),
            "architecture": (
                "CNN (conv+BN 5x5/2 32, 3x3/2 64, 3x3/1 64, 3x3/2 96 to 8x8x96) -> FC "
                f"{FEATURES}; init state FC; "
                f"LSTM {LAYERS}x{HIDDEN} on [embed {EMBED}; features] each step"
            ),
        },
        files={"training_curve.png": curve_path},
    )
