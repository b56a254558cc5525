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
from service.processing.speech import (
    SAMPLE_RATE,
    Transcript,
    ctc_greedy_transcripts,
    error_rates,
    pad_batch,
)

NAME = "speech-ctc"
SPEC_VERSION = "1"

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
    test_size: int = 600
    heldout_size: int = 64
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


def transcribe(model: SpeechCTC, audio: list[np.ndarray]) -> tuple[list[str], list[float]]:
    """Greedy transcripts and confidences through the full (exported) model."""
    model.eval()

    @torch.no_grad()  # grad mode is per thread: set it in the worker
    def run(idx: np.ndarray) -> list[Transcript]:
        log_probs, frames = model(*padded([audio[i] for i in idx]))
        return ctc_greedy_transcripts(log_probs.numpy(), frames.numpy(), data.VOCABULARY)

    batches = in_batches([a.size for a in audio], 32)
    texts: list[str] = [""] * len(audio)
    confidences: list[float] = [0.0] * len(audio)
    for idx, decoded in zip(batches, parallel_map(run, batches), strict=True):
        for i, result in zip(idx, decoded, strict=True):
            texts[i], confidences[i] = result.text, result.confidence
    return texts, confidences


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


def test_metrics(model: SpeechCTC, test_set: data.SpeechSet) -> dict[str, float]:
    """CER/WER on the held-out voices, overall and per kind of unseen voice."""
    texts, confidences = transcribe(model, test_set.audio)
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


def heldout_sample(test_set: data.SpeechSet, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` test utterances of at most 2 s (keeps the file small), both kinds of unseen voice."""
    rng = np.random.default_rng(seed)
    short = [i for i, a in enumerate(test_set.audio) if a.size <= 2 * SAMPLE_RATE]
    chosen = np.sort(rng.choice(short, size=min(count, len(short)), replace=False))
    waveform, lengths = pad_batch([test_set.audio[i] for i in chosen])
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
            ("val", config.val_size),
            ("test", config.test_size),
        )
    }
    synth_seconds = time.perf_counter() - started
    model = SpeechCTC(config, len(data.VOCABULARY))
    history = train(model, splits["train"], splits["val"], config, ctx.seed)
    train_seconds = time.perf_counter() - started - synth_seconds
    metrics = test_metrics(model, splits["test"])
    metrics["val_cer"] = round(history["val_cer"][-1], 5)
    metrics["val_wer"] = round(history["val_wer"][-1], 5)
    padding_diff = padding_check(model, splits["test"])

    curve = plot_curves(
        ctx.workdir / "training_curve.png",
        "speech-ctc: CTC loss; validation CER/WER (unseen variants)",
        {"train CTC loss": history["train_loss"], "val CTC loss": history["val_loss"]},
        secondary={"val CER": history["val_cer"], "val WER": history["val_wer"]},
    )
    heldout = heldout_sample(splits["test"], config.heldout_size, ctx.seed)
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
            "padding_max_abs_diff": padding_diff,
            "optimizer": "AdamW + OneCycle, CTC loss (zero_infinity), grad clip 1.0",
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        files={"training_curve.png": curve},
    )
