"""speech-ctc: character CTC speech recogniser for spoken digits and voice commands.

Raw 16 kHz waveform in, per-frame character log-probabilities out. The log-mel front end lives
inside the graph (STFT as a Conv1d with fixed windowed DFT kernels, fixed mel matrix), so the
server only decodes WAV and pads. Trained on espeak-ng speech (export/data/speech.py) and
evaluated on voices (accent/variant combinations) it never heard, including a whole accent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
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
from export.data import speech as data
from export.nn import MaskedBiLSTM, length_mask
from service.processing import speech_domain as domain
from service.processing.speech import (
    SAMPLE_RATE,
    Transcript,
    ctc_greedy_transcripts,
    error_rates,
    pad_batch,
)

NAME = "speech-ctc"
SPEC_VERSION = "2"

N_FFT = 512
WIN_LENGTH = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 64
F_MIN, F_MAX = 20.0, 8000.0
LOG_EPS = 1e-6
SUBSAMPLE = 3  # conv stride: 100 -> 33.3 frames per second
MAX_SECONDS = 5.0  # trained on single commands / digit strings of at most ~4.5 s
PADDING_LOG_PROB = -30.0  # log-prob of non-blank symbols at padding frames
SHARDS = 2  # batch shards trained in parallel threads (one per core)


@dataclass
class Config:
    """Data sizes and training hyper-parameters (sized for ~6 minutes on 2 CPU cores)."""

    train_size: int = 4800
    val_size: int = 200
    """Validation utterances scored after every epoch (the first of calibration_size)."""
    calibration_size: int = 1000
    """Validation utterances that choose the rejection threshold and fit the calibration."""
    test_size: int = 600
    heldout_size: int = 160
    ood_size: int = 100
    """Out-of-domain utterances per source (data.OOD_SOURCES and the near-miss source)."""
    ood_heldout: int = 20
    """Out-of-domain utterances per source stored with the model."""
    threshold_quantile: float = 0.995
    """The rejection threshold: this quantile of the validation utterances' domain scores."""
    channels: int = 128
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.15
    epochs: int = 15
    batch_size: int = 16  # two shards of 8; small batches leave the CTC plateau sooner
    lr: float = 3e-3
    warmup: float = 0.15  # OneCycle share of steps spent rising to lr
    weight_decay: float = 1e-2
    freq_masks: int = 2
    freq_mask_width: int = 8
    time_masks: int = 2
    time_mask_width: int = 8
    mel_warp: tuple[float, float] = (0.85, 1.2)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] triangular filters, equally spaced on the HTK mel scale."""
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


def dft_kernels(n_fft: int = N_FFT, win_length: int = WIN_LENGTH) -> np.ndarray:
    """[2 * (n_fft // 2 + 1), 1, win_length]: Hann-windowed cos then sin DFT rows."""
    n = np.arange(win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)  # periodic Hann
    k = np.arange(n_fft // 2 + 1)[:, None]
    angle = 2 * np.pi * k * n[None, :] / n_fft
    kernels = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])
    return kernels[:, None, :].astype(np.float32)


class LogMel(nn.Module):
    """Waveform [B, S] + lengths [B] -> normalised log-mel [B, T, n_mels] + frame lengths [B].

    Frames are centred every HOP samples (frame t covers t*HOP +- WIN_LENGTH/2). Samples past an
    item's length are zeroed first and statistics use valid frames only, so an item's features do
    not depend on what it was padded with or to. Normalisation: per-utterance mean per mel band
    (cepstral mean normalisation, removes gain) then a fixed per-band scale from training data.
    """

    kernels: torch.Tensor
    mel: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernels", torch.from_numpy(dft_kernels()))
        self.register_buffer("mel", torch.from_numpy(mel_filterbank()))
        self.register_buffer("scale", torch.ones(N_MELS))
        self.bins = N_FFT // 2 + 1

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, HOP, rounding_mode="floor") + 1

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        waveform = waveform * length_mask(lengths, waveform.shape[1]).to(waveform.dtype)
        padded = F.pad(waveform.unsqueeze(1), (WIN_LENGTH // 2, WIN_LENGTH // 2))
        spectrum = F.conv1d(padded, self.kernels, stride=HOP)  # [B, 2 * bins, T]
        real, imag = spectrum[:, : self.bins], spectrum[:, self.bins :]
        power = (real * real + imag * imag).transpose(1, 2)  # [B, T, bins]
        log_mel = torch.log(torch.matmul(power, self.mel) + LOG_EPS)
        frames = self.frame_lengths(lengths)
        mask = length_mask(frames, log_mel.shape[1]).unsqueeze(-1).to(log_mel.dtype)
        mean = (log_mel * mask).sum(dim=1, keepdim=True) / frames.view(-1, 1, 1).to(log_mel.dtype)
        return (log_mel - mean) * mask / self.scale, frames


class Encoder(nn.Module):
    """Features [B, T, n_mels] -> log-probs [B, T', vocab]: three convs (the second strided),
    MaskedBiLSTM layers and a linear layer. Padding frames are zeroed before each conv so valid
    outputs match an unpadded run."""

    padding_row: torch.Tensor

    def __init__(self, config: Config, vocab_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(N_MELS, config.channels, 5, padding=2)
        self.conv2 = nn.Conv1d(config.channels, config.channels, 5, stride=SUBSAMPLE, padding=2)
        self.conv3 = nn.Conv1d(config.channels, config.channels, 3, padding=1)
        self.norm = nn.LayerNorm(config.channels)
        # One MaskedBiLSTM per layer so dropout between layers can use an explicit generator.
        self.rnns = nn.ModuleList(
            MaskedBiLSTM(config.channels if i == 0 else 2 * config.hidden, config.hidden)
            for i in range(config.layers)
        )
        self.head = nn.Linear(2 * config.hidden, vocab_size)
        # Frames past frame_lengths get a fixed, certain blank: nothing to decode there.
        padding_row = torch.full((vocab_size,), PADDING_LOG_PROB)
        padding_row[data.BLANK] = 0.0
        self.register_buffer("padding_row", padding_row)
        self.dropout = config.dropout

    def out_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.div(frames - 1, SUBSAMPLE, rounding_mode="floor") + 1

    def drop(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Dropout from a caller's generator: shards train in threads, and the global generator
        would make their masks depend on thread timing."""
        if not self.training or self.dropout == 0 or generator is None:
            return x
        keep = torch.rand(x.shape, generator=generator) >= self.dropout
        return x * keep / (1.0 - self.dropout)

    def forward(
        self, features: torch.Tensor, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = length_mask(frames, features.shape[1]).unsqueeze(1).to(features.dtype)
        x = F.gelu(self.conv1(features.transpose(1, 2))) * mask
        x = F.gelu(self.conv2(x))  # [B, C, T']
        out_frames = self.out_lengths(frames)
        out_mask = length_mask(out_frames, x.shape[2]).unsqueeze(1).to(x.dtype)
        x = x * out_mask
        x = (x + F.gelu(self.conv3(x))) * out_mask
        x = self.norm(x.transpose(1, 2)) * out_mask.transpose(1, 2)
        for rnn in self.rnns:
            x = rnn(self.drop(x, generator), out_frames)
        log_probs = F.log_softmax(self.head(self.drop(x, generator)), dim=-1)
        valid = length_mask(out_frames, log_probs.shape[1]).unsqueeze(-1)
        return torch.where(valid, log_probs, self.padding_row), out_frames


class SpeechCTC(nn.Module):
    """The exported graph: (waveform, lengths) -> (log_probs, frame_lengths)."""

    def __init__(self, config: Config, vocab_size: int) -> None:
        super().__init__()
        self.features = LogMel()
        self.encoder = Encoder(config, vocab_size)

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features, frames = self.features(waveform, lengths)
        return self.encoder(features, frames)


def padded(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    waveform, lengths = pad_batch(arrays)
    return torch.from_numpy(waveform), torch.from_numpy(lengths)


def in_batches(sizes: list[int], batch: int) -> list[np.ndarray]:
    """Index batches of similar size (sorted), for inference."""
    order = np.argsort(sizes, kind="stable")
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def parallel_map(fn: Callable[[Any], Any], jobs: list[Any]) -> list[Any]:
    """fn over jobs in SHARDS threads (torch ops release the GIL), results in job order."""
    with ThreadPoolExecutor(max_workers=SHARDS) as pool:
        return list(pool.map(fn, jobs))


def compute_features(model: SpeechCTC, audio: list[np.ndarray]) -> list[torch.Tensor]:
    """Per-utterance features [T_i, n_mels] (valid frames only), in input order."""
    model.eval()

    @torch.no_grad()  # grad mode is per thread: set it in the worker
    def run(idx: np.ndarray) -> list[torch.Tensor]:
        feats, frames = model.features(*padded([audio[i] for i in idx]))
        return [feats[row, : int(n)].clone() for row, n in enumerate(frames)]

    batches = in_batches([a.size for a in audio], 32)
    out: list[torch.Tensor] = [torch.empty(0)] * len(audio)
    for idx, feats in zip(batches, parallel_map(run, batches), strict=True):
        for i, f in zip(idx, feats, strict=True):
            out[i] = f
    return out


def spec_augment(
    x: torch.Tensor, frames: torch.Tensor, config: Config, gen: torch.Generator
) -> torch.Tensor:
    """Per item: warp the mel axis (VTLP-like, another vocal tract length), then zero random
    mel bands and short time spans (features are mean-normalised: 0 is neutral)."""
    batch, _steps, bands = x.shape
    low, high = config.mel_warp
    warp = low + (high - low) * torch.rand(batch, generator=gen)
    source = (torch.arange(bands).unsqueeze(0) / warp.unsqueeze(1)).clamp(max=bands - 1)
    lower = source.floor().long().clamp(max=bands - 2)
    frac = (source - lower).unsqueeze(1)  # [B, 1, bands]
    index = lower.unsqueeze(1).expand(-1, x.shape[1], -1)
    x = torch.gather(x, 2, index) * (1 - frac) + torch.gather(x, 2, index + 1) * frac
    for b in range(batch):
        for _ in range(config.freq_masks):
            width = int(torch.randint(0, config.freq_mask_width + 1, (1,), generator=gen))
            start = int(torch.randint(0, bands - width + 1, (1,), generator=gen))
            x[b, :, start : start + width] = 0
        for _ in range(config.time_masks):
            length = int(frames[b])
            width = min(
                int(torch.randint(0, config.time_mask_width + 1, (1,), generator=gen)), length // 8
            )
            start = int(torch.randint(0, max(1, length - width + 1), (1,), generator=gen))
            x[b, start : start + width] = 0
    return x


def length_batches(
    lengths: list[int], batch: int, rng: np.random.Generator, shuffle: bool = True
) -> list[np.ndarray]:
    """Batches of similar length (sorted with jitter so batches change between epochs), in
    random order, or shortest first when not shuffled (SortaGrad: CTC leaves its all-blank
    plateau sooner on short utterances)."""
    jittered = np.asarray(lengths) * rng.uniform(0.9, 1.1, size=len(lengths))
    order = np.argsort(jittered)
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    return [batches[i] for i in rng.permutation(len(batches))] if shuffle else batches


def collate(
    feats: list[torch.Tensor], labels: list[list[int]], idx: np.ndarray
) -> tuple[torch.Tensor, ...]:
    items = [feats[i] for i in idx]
    frames = torch.tensor([f.shape[0] for f in items], dtype=torch.int64)
    x = nn.utils.rnn.pad_sequence(items, batch_first=True)
    targets = torch.tensor([c for i in idx for c in labels[i]], dtype=torch.int64)
    target_lengths = torch.tensor([len(labels[i]) for i in idx], dtype=torch.int64)
    return x, frames, targets, target_lengths


def posteriors(model: SpeechCTC, audio: list[np.ndarray]) -> list[np.ndarray]:
    """Per-utterance log-probs [T_i, vocab] (valid frames only) through the full (exported)
    model, in input order."""
    model.eval()

    @torch.no_grad()  # grad mode is per thread: set it in the worker
    def run(idx: np.ndarray) -> list[np.ndarray]:
        log_probs, frames = model(*padded([audio[i] for i in idx]))
        return [log_probs[row, : int(n)].numpy().copy() for row, n in enumerate(frames)]

    batches = in_batches([a.size for a in audio], 32)
    out: list[np.ndarray] = [np.empty(0)] * len(audio)
    for idx, rows in zip(batches, parallel_map(run, batches), strict=True):
        for i, row in zip(idx, rows, strict=True):
            out[i] = row
    return out


def greedy(log_probs: list[np.ndarray]) -> list[Transcript]:
    return [
        ctc_greedy_transcripts(lp[None], np.array([lp.shape[0]]), data.VOCABULARY)[0]
        for lp in log_probs
    ]


def transcribe(model: SpeechCTC, audio: list[np.ndarray]) -> tuple[list[str], list[float]]:
    """Greedy transcripts and confidences through the full (exported) model."""
    decoded = greedy(posteriors(model, audio))
    return [t.text for t in decoded], [t.confidence for t in decoded]


def evaluate_features(
    encoder: Encoder, feats: list[torch.Tensor], labels: list[list[int]]
) -> tuple[float, list[str]]:
    """Mean CTC loss (per target character) and greedy transcripts from features (validation)."""
    encoder.eval()

    @torch.no_grad()  # grad mode is per thread: set it in the worker
    def run(idx: np.ndarray) -> tuple[float, list[Transcript]]:
        x, frames, targets, target_lengths = collate(feats, labels, idx)
        log_probs, out_frames = encoder(x, frames)
        loss = F.ctc_loss(
            log_probs.transpose(0, 1), targets, out_frames, target_lengths,
            blank=data.BLANK, reduction="none", zero_infinity=True,
        )  # fmt: skip
        decoded = ctc_greedy_transcripts(log_probs.numpy(), out_frames.numpy(), data.VOCABULARY)
        return float((loss / target_lengths.clamp_min(1)).sum()), decoded

    batches = in_batches([f.shape[0] for f in feats], 32)
    total, texts = 0.0, [""] * len(feats)
    for idx, (loss, decoded) in zip(batches, parallel_map(run, batches), strict=True):
        total += loss
        for i, result in zip(idx, decoded, strict=True):
            texts[i] = result.text
    return total / len(feats), texts


def shard_step(
    encoder: Encoder,
    feats: list[torch.Tensor],
    labels: list[list[int]],
    idx: np.ndarray,
    batch_size: int,
    config: Config,
    seed: int,
) -> tuple[float, list[torch.Tensor]]:
    """Summed CTC loss (per-item mean over target length, / batch_size) and its gradients for
    one shard of a batch; thread-safe (own generator, no .grad accumulation)."""
    gen = torch.Generator().manual_seed(int(seed))
    x, frames, targets, target_lengths = collate(feats, labels, idx)
    x = spec_augment(x, frames, config, gen)
    log_probs, out_frames = encoder(x, frames, gen)
    per_item = F.ctc_loss(
        log_probs.transpose(0, 1), targets, out_frames, target_lengths,
        blank=data.BLANK, reduction="none", zero_infinity=True,
    )  # fmt: skip
    loss = (per_item / target_lengths.clamp_min(1)).sum() / batch_size
    grads = torch.autograd.grad(loss, list(encoder.parameters()))
    return float(loss.detach()), list(grads)


def train(
    model: SpeechCTC, train_set: data.SpeechSet, val_set: data.SpeechSet, config: Config, seed: int
) -> dict[str, list[float]]:
    """Fit the encoder with CTC on precomputed log-mel features (the front end is fixed).

    Each batch is split in two shards whose gradients are computed in two threads with one
    intra-op thread each, then summed in a fixed order (deterministic). Measured on this 2-core
    machine, torch's own 2-thread kernels gained little on these small LSTM steps and slowed
    down several-fold when other processes competed for the cores.
    """
    train_feats = compute_features(model, train_set.audio)
    stacked = torch.cat(train_feats)
    model.features.scale.copy_(stacked.std(dim=0).clamp_min(1e-3))
    train_feats = [f / model.features.scale for f in train_feats]
    val_feats = compute_features(model, val_set.audio)
    train_labels = [data.encode_transcript(t) for t in train_set.transcripts]
    val_labels = [data.encode_transcript(t) for t in val_set.transcripts]

    encoder = model.encoder
    params = list(encoder.parameters())
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(train_feats) / config.batch_size)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=config.epochs * steps_per_epoch,
        pct_start=config.warmup,
    )
    history: dict[str, list[float]] = {
        "train_loss": [],
        "val_loss": [],
        "val_cer": [],
        "val_wer": [],
    }
    lengths = [f.shape[0] for f in train_feats]
    bar = progress(total=config.epochs * steps_per_epoch, desc="train speech-ctc")
    with ThreadPoolExecutor(max_workers=SHARDS) as pool:
        for epoch in range(config.epochs):
            encoder.train()
            losses = []
            for idx in length_batches(lengths, config.batch_size, rng, shuffle=epoch > 0):
                shards = np.array_split(idx, SHARDS)
                seeds = rng.integers(2**31, size=SHARDS)
                jobs = [(shard, seed, len(idx)) for shard, seed in zip(shards, seeds, strict=True)]
                results = list(
                    pool.map(
                        lambda job: shard_step(
                            encoder, train_feats, train_labels, job[0], job[2], config, job[1]
                        ),
                        jobs,
                    )
                )
                for param, *grads in zip(params, *(r[1] for r in results), strict=True):
                    param.grad = torch.stack(grads).sum(dim=0)
                nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                losses.append(sum(r[0] for r in results))
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
            val_loss, texts = evaluate_features(encoder, val_feats, val_labels)
            rates = error_rates(val_set.transcripts, texts)
            history["train_loss"].append(float(np.mean(losses)))
            history["val_loss"].append(val_loss)
            history["val_cer"].append(rates["cer"])
            history["val_wer"].append(rates["wer"])
            bar.write(
                f"epoch {epoch + 1}: train loss {history['train_loss'][-1]:.3f}, val loss "
                f"{val_loss:.3f}, val CER {rates['cer']:.4f}, WER {rates['wer']:.4f}"
            )
    bar.close()
    model.eval()
    return history


def test_metrics(test_set: data.SpeechSet, decoded: list[Transcript]) -> dict[str, float]:
    """CER/WER on the held-out voices, overall and per kind of unseen voice."""
    texts, confidences = [t.text for t in decoded], [t.confidence for t in decoded]
    accents = np.array([s.accent for s in test_set.specs])
    metrics: dict[str, float] = {}
    groups = {
        "": np.ones(len(texts), dtype=bool),
        "_unseen_accent": accents == data.TEST_ACCENT,
        "_unseen_variants": accents != data.TEST_ACCENT,
    }
    for suffix, chosen in groups.items():
        refs = [t for t, keep in zip(test_set.transcripts, chosen, strict=True) if keep]
        hyps = [t for t, keep in zip(texts, chosen, strict=True) if keep]
        rates = error_rates(refs, hyps)
        metrics[f"cer{suffix}"] = round(rates["cer"], 5)
        metrics[f"wer{suffix}"] = round(rates["wer"], 5)
        metrics[f"utterances{suffix}"] = float(len(refs))
    metrics["sentence_accuracy"] = round(
        float(np.mean([r == h for r, h in zip(test_set.transcripts, texts, strict=True)])), 5
    )
    metrics["test_words"] = float(sum(len(t.split()) for t in test_set.transcripts))
    metrics["test_chars"] = float(sum(len(t) for t in test_set.transcripts))
    metrics["mean_confidence"] = round(float(np.mean(confidences)), 5)
    return metrics


@torch.no_grad()
def padding_check(model: SpeechCTC, test_set: data.SpeechSet, count: int = 8) -> float:
    """Max |diff| of log-probs (valid frames) between items alone and padded in a batch with a
    longer item; raises if a decoded transcript changes."""
    order = np.argsort([a.size for a in test_set.audio])
    longest = test_set.audio[order[-1]]
    worst = 0.0
    for i in order[:: max(1, len(order) // count)][:count]:
        clip = test_set.audio[i]
        alone, frames_alone = model(*padded([clip]))
        batch, frames_batch = model(*padded([clip, longest]))
        n = int(frames_alone[0])
        if int(frames_batch[0]) != n:
            raise AssertionError("frame_lengths change with padding")
        worst = max(worst, float((alone[0, :n] - batch[0, :n]).abs().max()))
        texts = [
            ctc_greedy_transcripts(lp.numpy(), fr.numpy(), data.VOCABULARY)[0].text
            for lp, fr in ((alone, frames_alone), (batch[:1], frames_batch[:1]))
        ]
        if texts[0] != texts[1]:
            raise AssertionError(f"padding changed the transcript: {texts}")
    if worst > 1e-4:
        raise AssertionError(f"padding changes log_probs by {worst:.2e}")
    return worst


@dataclass
class Scored:
    """Utterances decoded greedily and scored against the grammar."""

    texts: list[str]
    confidences: np.ndarray
    scores: np.ndarray
    nearest: list[str]

    @classmethod
    def of(cls, log_probs: list[np.ndarray], grammar: domain.Grammar) -> Scored:
        decoded = greedy(log_probs)
        scored = [domain.domain_score(lp, grammar) for lp in log_probs]
        return cls(
            [t.text for t in decoded],
            np.array([t.confidence for t in decoded]),
            np.array([d.score for d in scored]),
            [d.nearest for d in scored],
        )

    def correct(self, references: list[str]) -> np.ndarray:
        return np.array([t == r for t, r in zip(self.texts, references, strict=True)])


def grammar() -> domain.Grammar:
    return domain.compile_grammar(data.VOCABULARY, data.PHRASES, data.DIGIT_WORDS, data.MAX_DIGITS)


def out_of_domain_sets(config: Config, seed: int, cache_dir: Any) -> dict[str, data.SpeechSet]:
    """Every out-of-domain source (the bar's and the near misses), in voices training never
    used, each utterance cut to MAX_SECONDS (the longest item the service sends the model)."""
    sets = {}
    for source in [*data.OOD_SOURCES, data.NEAR_MISS_SOURCE]:
        found = data.build_ood_set(source, config.ood_size, seed, cache_dir)
        found.audio = [a[: int(MAX_SECONDS * SAMPLE_RATE)] for a in found.audio]
        sets[source] = found
    return sets


def rate(flags: np.ndarray) -> float:
    """The share of True (0 for no items: a tiny smoke-test build may have none)."""
    return round(float(np.mean(flags)), 5) if flags.size else 0.0


def domain_evaluation(
    val: Scored,
    val_set: data.SpeechSet,
    test: Scored,
    test_set: data.SpeechSet,
    ood: dict[str, Scored],
    config: Config,
) -> tuple[dict[str, Any], domain.Calibration, dict[str, float]]:
    """The rejection threshold and the confidence calibration, both from the validation split,
    then measured on the test voices and the out-of-domain sources: (extra["domain"], the
    calibration, metrics)."""
    threshold = float(np.quantile(val.scores, config.threshold_quantile))
    val_correct, test_correct = val.correct(val_set.transcripts), test.correct(test_set.transcripts)
    calibration = domain.fit_platt(val.confidences, val.scores, val_correct)
    test_flagged = test.scores > threshold
    bar = np.concatenate([ood[s].scores > threshold for s in data.OOD_SOURCES])
    unseen_accent = np.array([s.accent == data.TEST_ACCENT for s in test_set.specs])
    calibrated = domain.calibrated_confidence(test.confidences, test.scores, calibration)
    ood_confidences = np.concatenate([ood[s].confidences for s in data.OOD_SOURCES])
    ood_scores = np.concatenate([ood[s].scores for s in data.OOD_SOURCES])
    metrics = {
        "in_domain_flagged": rate(test_flagged),
        "in_domain_flagged_correct": rate(test_flagged[test_correct]),
        "in_domain_flagged_wrong": rate(test_flagged[~test_correct]),
        "in_domain_flagged_unseen_accent": rate(test_flagged[unseen_accent]),
        "in_domain_flagged_unseen_variants": rate(test_flagged[~unseen_accent]),
        "val_flagged": rate(val.scores > threshold),
        "ood_flagged": rate(bar),
        **{f"ood_flagged_{s}": rate(o.scores > threshold) for s, o in ood.items()},
        "ood_utterances": float(bar.size),
        "ece_raw": round(domain.expected_calibration_error(test.confidences, test_correct), 5),
        "ece_calibrated": round(domain.expected_calibration_error(calibrated, test_correct), 5),
        "ece_raw_val": round(domain.expected_calibration_error(val.confidences, val_correct), 5),
        "mean_confidence_calibrated": round(float(calibrated.mean()), 5),
        "ood_mean_confidence": round(float(ood_confidences.mean()), 5),
        "ood_mean_confidence_calibrated": round(
            float(domain.calibrated_confidence(ood_confidences, ood_scores, calibration).mean()), 5
        ),
        "sentence_accuracy_nearest": rate(
            np.array([n == r for n, r in zip(test.nearest, test_set.transcripts, strict=True)])
        ),
    }
    per_source: dict[str, dict[str, Any]] = {
        "validation": {"count": len(val.scores), "flagged": metrics["val_flagged"]},
        "test": {"count": len(test.scores), "flagged": metrics["in_domain_flagged"]},
    }
    for source, scored in ood.items():
        per_source[source] = {
            "count": len(scored.scores),
            "flagged": metrics[f"ood_flagged_{source}"],
            "in_bar": source in data.OOD_SOURCES,
        }
    extra = {
        "method": "Viterbi over the compiled grammar (the phrases, digit strings of 1-"
        f"{data.MAX_DIGITS} digit words, silence) finds the nearest in-grammar transcript; "
        "score = its CTC forward negative log-likelihood per frame + "
        f"{domain.ENTROPY_WEIGHT} x the mean posterior entropy of the frames whose best symbol "
        "is not the blank (service/processing/speech_domain.py)",
        "score": "nats per frame: ~0 for in-grammar speech heard clearly, larger = further from "
        "anything the model knows; out of domain when score > threshold",
        "entropy_weight": domain.ENTROPY_WEIGHT,
        "threshold": round(threshold, 6),
        "chosen_on": f"the {config.threshold_quantile:.1%} quantile of the scores of the "
        f"validation split ({len(val.scores)} in-domain utterances; training accents with "
        "validation variants, voices training never used); the test split and the "
        "out-of-domain sources play no part in it",
        "measured": {
            "in_domain_flagged": metrics["in_domain_flagged"],
            "out_of_domain_flagged": metrics["ood_flagged"],
            "in_domain_count": len(test.scores),
            "out_of_domain_count": int(bar.size),
            "in_domain": "the test split: voices training never used (an unseen accent and "
            "unseen variants)",
            "out_of_domain": f"sources {data.OOD_SOURCES} in voices training never used "
            "(export/data/speech.py); near_miss is reported apart, not in the bar",
            "in_domain_flagged_correct": metrics["in_domain_flagged_correct"],
            "in_domain_flagged_wrong": metrics["in_domain_flagged_wrong"],
            "per_source": per_source,
        },
    }
    return extra, calibration, metrics


def heldout_domain_sample(
    model: SpeechCTC,
    heldout: dict[str, np.ndarray],
    ood_sets: dict[str, data.SpeechSet],
    config: Config,
    seed: int,
) -> dict[str, np.ndarray]:
    """The build's domain scores of the stored in-domain sample, and `ood_heldout` utterances
    per out-of-domain source stored as 16-bit PCM with the scores of that very audio."""
    rng = np.random.default_rng([seed, 5])
    rules = grammar()
    id_audio = [row[: int(n)] for row, n in zip(heldout["waveform"], heldout["lengths"])]
    clips, sources, texts = [], [], []
    for source, found in ood_sets.items():
        for i in np.sort(rng.choice(len(found.audio), size=config.ood_heldout, replace=False)):
            clips.append(pcm16(found.audio[i]))
            sources.append(source)
            texts.append(found.specs[i].text)
    ood_audio = [c.astype(np.float32) / 32768.0 for c in clips]
    waveform = np.zeros((len(clips), max(c.size for c in clips)), dtype=np.int16)
    for row, clip in enumerate(clips):
        waveform[row, : clip.size] = clip
    return {
        "domain_score": Scored.of(posteriors(model, id_audio), rules).scores,
        "ood_waveform": waveform,
        "ood_lengths": np.array([c.size for c in clips], dtype=np.int64),
        "ood_source": np.array(sources, dtype=np.str_),
        "ood_text": np.array(texts, dtype=np.str_),
        "ood_score": Scored.of(posteriors(model, ood_audio), rules).scores,
    }


def pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] as 16-bit PCM (what a WAV client sends)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def heldout_sample(test_set: data.SpeechSet, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` test utterances of at most 2 s (keeps the file small), both kinds of unseen voice;
    float32 on 16-bit levels (as a WAV client sends them: the file compresses to half)."""
    rng = np.random.default_rng(seed)
    short = [i for i, a in enumerate(test_set.audio) if a.size <= 2 * SAMPLE_RATE]
    chosen = np.sort(rng.choice(short, size=min(count, len(short)), replace=False))
    waveform, lengths = pad_batch(
        [pcm16(test_set.audio[i]).astype(np.float32) / 32768.0 for i in chosen]
    )
    return {
        "waveform": waveform,
        "lengths": lengths,
        "transcript": np.array([test_set.transcripts[i] for i in chosen], dtype=np.str_),
        "voice": np.array([test_set.specs[i].voice for i in chosen], dtype=np.str_),
    }


def parity_cases(heldout: dict[str, np.ndarray], seed: int) -> list[tuple[str, list[np.ndarray]]]:
    """Real held-out batches plus random waveforms at three batch sizes and ragged lengths."""
    rng = np.random.default_rng(seed)

    def real(rows: slice) -> list[np.ndarray]:
        lengths = heldout["lengths"][rows]
        return [heldout["waveform"][rows, : int(lengths.max())].copy(), lengths.copy()]

    def random(batch: int, low: int, high: int) -> list[np.ndarray]:
        lengths = rng.integers(low, high, size=batch).astype(np.int64)
        lengths[0] = high  # the longest item fixes the padded width
        waveform = (rng.standard_normal((batch, high)) * 0.1).astype(np.float32)
        return [np.clip(waveform, -1, 1), lengths]

    return [
        ("heldout batch of 4", real(slice(0, 4))),
        ("heldout single", real(slice(4, 5))),
        ("heldout batch of 16", real(slice(8, 24))),
        ("random batch 1", random(1, 4000, 12000)),
        ("random batch 3", random(3, 2000, 20000)),
        ("random batch 12", random(12, 400, 36000)),
    ]


def build(ctx: BuildContext, config: Config | None = None) -> Built:
    set_threads()
    ctx.seed_everything()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parallel work runs in SHARDS threads instead (see train)
    try:
        return build_with(ctx, config or Config())
    finally:
        torch.set_num_threads(threads)


def build_with(ctx: BuildContext, config: Config) -> Built:
    """The build proper: data, training, evaluation, graph and spec entries."""
    started = time.perf_counter()
    splits = {
        name: data.build_split(name, size, ctx.seed, ctx.cache_dir)
        for name, size in (
            ("train", config.train_size),
            ("val", max(config.val_size, config.calibration_size)),
            ("test", config.test_size),
        )
    }
    val = splits["val"]
    first = slice(0, config.val_size)  # the same utterances whatever calibration_size is
    monitor = data.SpeechSet(val.audio[first], val.transcripts[first], val.specs[first])
    synth_seconds = time.perf_counter() - started
    model = SpeechCTC(config, len(data.VOCABULARY))
    history = train(model, splits["train"], monitor, config, ctx.seed)
    train_seconds = time.perf_counter() - started - synth_seconds
    test_log_probs = posteriors(model, splits["test"].audio)
    metrics = test_metrics(splits["test"], greedy(test_log_probs))
    metrics["val_cer"] = round(history["val_cer"][-1], 5)
    metrics["val_wer"] = round(history["val_wer"][-1], 5)
    padding_diff = padding_check(model, splits["test"])

    domain_started = time.perf_counter()
    ood_sets = out_of_domain_sets(config, ctx.seed, ctx.cache_dir)
    rules = grammar()
    scoring_started = time.perf_counter()
    test_scored = Scored.of(test_log_probs, rules)
    scoring_ms = 1000 * (time.perf_counter() - scoring_started) / len(test_log_probs)
    domain_extra, calibration, domain_metrics = domain_evaluation(
        Scored.of(posteriors(model, val.audio), rules),
        val,
        test_scored,
        splits["test"],
        {s: Scored.of(posteriors(model, found.audio), rules) for s, found in ood_sets.items()},
        config,
    )
    metrics.update(domain_metrics)
    metrics["domain_ms_per_utterance"] = round(scoring_ms, 3)

    curve = plot_curves(
        ctx.workdir / "training_curve.png",
        "speech-ctc: CTC loss; validation CER/WER (unseen variants)",
        {"train CTC loss": history["train_loss"], "val CTC loss": history["val_loss"]},
        secondary={"val CER": history["val_cer"], "val WER": history["val_wer"]},
    )
    heldout = heldout_sample(splits["test"], config.heldout_size, ctx.seed)
    heldout.update(heldout_domain_sample(model, heldout, ood_sets, config, ctx.seed))
    domain_seconds = time.perf_counter() - domain_started
    vocab = len(data.VOCABULARY)
    graph = GraphExport(
        module=model.eval(),
        inputs=[
            TensorDecl(
                "waveform", "FP32", ["batch", "samples"], "16 kHz mono in [-1, 1], zero padded"
            ),
            TensorDecl("lengths", "INT64", ["batch"], "valid samples per item"),
        ],
        outputs=[
            TensorDecl(
                "log_probs", "FP32", ["batch", "frames", vocab], "CTC log-probabilities per frame"
            ),
            TensorDecl("frame_lengths", "INT64", ["batch"], "valid frames per item"),
        ],
        parity_cases=parity_cases(heldout, ctx.seed),
    )
    return Built(
        task="speech-recognition",
        graphs={"model": graph},
        metrics=metrics,
        data={
            "source": "synthesised with espeak-ng (Debian package) from seeded per-utterance "
            "specs (export/data/speech.py)",
            "espeak_ng_version": data._espeak_version(),
            "splits": {name: s.describe() for name, s in splits.items()},
            "val_roles": f"the first {config.val_size} validation utterances are scored after "
            f"every epoch; all {len(val.audio)} choose the rejection threshold and fit the "
            "confidence calibration",
            "out_of_domain": {
                "sets": {source: found.describe() for source, found in ood_sets.items()},
                "sources": "reviews: Rotten Tomatoes snippets of "
                f"{data.REVIEW_WORDS[0]}-{data.REVIEW_WORDS[1]} words (export/data/reviews.py); "
                f"everyday: {len(data.EVERYDAY_SENTENCES)} everyday English sentences; "
                f"foreign: {sum(map(len, data.FOREIGN_SENTENCES.values()))} sentences in "
                f"{len(data.FOREIGN_SENTENCES)} other languages read by their own espeak-ng "
                f"voices; spelled: {len(data.SPELLED_WORDS)} words read letter by letter; "
                f"near_miss (not in the bar): {len(data.NEAR_MISS_TEXTS)} commands and words "
                "close to the grammar",
                "voices": "English: the test voices (the unseen accent, the unseen variants); "
                "other languages: their own voice, plain or with a test variant",
                "augmentation": "as the test split; cut to "
                f"{MAX_SECONDS:g} s (the longest item the service sends the model)",
            },
            "content": f"digit strings (1-{data.MAX_DIGITS} of zero..nine) and "
            f"{len(data.PHRASES)} command phrases, half each",
            "voices": {
                "accents": data.ACCENTS,
                "variants": len(data.VARIANTS),
                "test_accent_unseen": data.TEST_ACCENT,
                "test_variants_unseen": data.TEST_VARIANTS,
                "val_variants": data.VAL_VARIANTS,
                "generated_variants": f"{data.RANDOM_VARIANTS} random espeak-ng variant files "
                "(pitch range, formants, voicing, roughness, breath, klatt) voice "
                f"{data.RANDOM_VARIANT_SHARE:.0%} of the training utterances",
                "split_rule": "train/val/test are disjoint by accent+variant; the test accent "
                "and the test variants never occur in training or validation",
            },
            "augmentation": {
                "speed_wpm": list(data.SPEED_RANGE),
                "pitch": list(data.PITCH_RANGE),
                "snr_db": list(data.SNR_RANGE_DB),
                "noise": "white to strongly low-passed Gaussian; "
                f"{data.CLEAN_FRACTION:.0%} of utterances without noise",
                "peak_db": list(data.PEAK_RANGE_DB),
                "silence_s": list(data.SILENCE_RANGE_S),
                "noise_only": f"{data.NOISE_ONLY_SHARE:.0%} of training utterances have no "
                "speech (noise or digital silence, empty transcript)",
                "resample_stretch": list(data.STRETCH_RANGE),
                "training": f"mel-axis warp {list(config.mel_warp)} (VTLP-like), SpecAugment "
                f"({config.freq_masks} band masks <= {config.freq_mask_width} mels, "
                f"{config.time_masks} time masks <= {config.time_mask_width * HOP // 16} ms)",
            },
            "license": "espeak-ng is GPL-3.0-or-later; audio it generates is not covered by "
            "its license. All transcripts are generated here.",
        },
        vocabulary=list(data.VOCABULARY),
        preprocessing={
            "sample_rate": SAMPLE_RATE,
            "channels": 1,
            "in_graph": f"log-mel (n_fft {N_FFT}, window {WIN_LENGTH} Hann, hop {HOP}, "
            f"{N_MELS} mels {F_MIN:.0f}-{F_MAX:.0f} Hz, log(x + {LOG_EPS:g}), per-utterance "
            "mean per band over valid frames, fixed per-band scale)",
            "max_seconds": MAX_SECONDS,
            "input_range": [-1.0, 1.0],
            "padding": "zeros; lengths gives valid samples; padding never changes a result",
            "utterance": "one command phrase or digit string per request (trained on single "
            "utterances; several in one request are recognised poorly)",
        },
        extra={
            "blank_index": data.BLANK,
            "decoder": "ctc-greedy",
            "phrases": list(data.PHRASES),
            "digit_words": list(data.DIGIT_WORDS),
            "max_digits": data.MAX_DIGITS,
            "domain": domain_extra,
            "confidence_calibration": {
                **calibration.to_spec(),
                "formula": "confidence = sigmoid(a * logit(greedy confidence) + b - c * "
                "domain score); greedy confidence = exp(mean best-path log-prob)",
                "fit_on": f"the validation split ({config.calibration_size} utterances): "
                "whether the greedy transcript is exactly right",
                "ece_before": metrics["ece_raw"],
                "ece_after": metrics["ece_calibrated"],
                "ece_on": f"the test split ({config.test_size} utterances), 10 equal bins",
            },
            "frame_rate_hz": SAMPLE_RATE / HOP / SUBSAMPLE,
            "frame_lengths_formula": f"(lengths // {HOP}) // {SUBSAMPLE} + 1",
            "padding_frames": f"frames past frame_lengths are blank (log-prob 0, others "
            f"{PADDING_LOG_PROB:g})",
        },
        heldout=heldout,
        training={
            "config": asdict(config),
            "epochs": config.epochs,
            "final_train_loss": round(history["train_loss"][-1], 4),
            "final_val_loss": round(history["val_loss"][-1], 4),
            "synthesis_seconds": round(synth_seconds, 1),
            "fit_seconds": round(train_seconds, 1),
            "domain_seconds": round(domain_seconds, 1),
            "padding_max_abs_diff": padding_diff,
            "optimizer": "AdamW + OneCycle, CTC loss (zero_infinity), grad clip 1.0",
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        files={"training_curve.png": curve},
    )
