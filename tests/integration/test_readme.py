"""The README's code blocks, run as written against a server of their own (its own store, its
own ports; the blocks' 127.0.0.1:3000 and :50051 are pointed at it).

Shell blocks run in bash (`set -eo pipefail`) from a scratch folder that holds the repository's
examples/, deploy/, loadtests/ and build/ (perf_analyzer, `make perf-analyzer`), with the
venv's tools first on PATH, as after `source .venv/bin/activate`; Python blocks run in the
venv's Python. Blocks run in README order (later ones use what earlier ones wrote, e.g.
/tmp/long.wav). A `curl` on PATH records each HTTP status: every answer must be 2xx unless the
block shows that status right after the command (`# -> 422 ...`); a call with -f/--fail answers
through its exit code. /tmp/ in a block is a folder of the run's own. A block that builds,
serves, load-tests or needs Docker or Kubernetes says so on its first line
(`# not run by the doc test: <reason>`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.server import Server, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "# not run by the doc test: "
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
SHOWN_STATUS = re.compile(r"^#\s*->\s*([1-5]\d\d)\b")
URL = re.compile(r"https?://[^\s'\"]+")
BLOCK_TIMEOUT_S = 180


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    text: str
    section: str

    @property
    def skip_reason(self) -> str | None:
        first = self.text.split("\n", 1)[0]
        return first[len(MARKER) :].strip() if first.startswith(MARKER) else None

    @property
    def name(self) -> str:
        return f"L{self.line}-{self.lang}-{re.sub(r'[^a-z0-9]+', '-', self.section.lower())[:40]}"


def readme_blocks(text: str) -> list[Block]:
    blocks, section, lines = [], "", text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        if line.startswith("```"):
            lang, start, body = line[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md:{start}: a code block is never closed"
            blocks.append(Block(start, lang, "\n".join(body), section))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUN = [b for b in BLOCKS if b.lang in RUNNABLE]


def test_every_block_is_run_or_says_why_not() -> None:
    untagged = [b.line for b in BLOCKS if not b.lang]
    assert not untagged, f"README.md lines {untagged}: a block needs a language (bash, text...)"
    unknown = {b.lang for b in BLOCKS} - {*RUNNABLE, "text", "yaml", "json", ""}
    assert not unknown, f"languages the doc test does not know: {unknown}"
    for block in RUN:
        reason = block.skip_reason
        assert reason is None or len(reason) > 8, f"README.md:{block.line}: say why it is not run"
    run = [b for b in RUN if b.skip_reason is None]
    assert len(run) >= 15, f"only {len(run)} README blocks run"


def test_the_marker_is_the_only_way_to_skip() -> None:
    """A block whose first line merely mentions the marker's words is still run."""
    parsed = readme_blocks(
        "# A\n```bash\n# not run by the doc test: needs Docker\ndocker ps\n```\n"
        "```bash\necho '# not run by the doc test: no'\n```\n"
    )
    assert [b.skip_reason for b in parsed] == ["needs Docker", None]


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, dict]]:
    tmp = tmp_path_factory.mktemp("readme")
    built = Path(os.environ["BENTOML_HOME"]) / "models"
    store = tmp / "store"
    (store / "models").mkdir(parents=True)
    # its own store: the built models linked one by one (read-only use), so what the README
    # imports lands in this store only
    for model in built.iterdir():
        if model.is_dir():
            (store / "models" / model.name).symlink_to(model.resolve(), target_is_directory=True)
    env = {
        "BENTOML_HOME": str(store),
        "DEEPSERVE_STORE": str(store),
        "DEEPSERVE_PLACEMENT": "local",
        "DEEPSERVE_POLL_INTERVAL_S": "1",
    }
    server = start_server(tmp, env)
    try:
        yield server, *_workspace(tmp, env)
    finally:
        stop_server(server)


def _workspace(tmp: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A scratch folder that holds what the blocks read, and the environment they run in."""
    work = tmp / "work"
    (work / "tmp").mkdir(parents=True)
    for shared in ("examples", "deploy", "loadtests", "service", "build"):
        (work / shared).symlink_to(ROOT / shared, target_is_directory=True)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    real_curl = shutil.which("curl")
    assert real_curl, "curl is needed by the README's examples"
    statuses = tmp / "statuses.log"
    shim = bin_dir / "curl"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        "# records the HTTP status of each call for the doc test, then answers as curl does\n"
        "headers=$(mktemp)\n"
        f'"{real_curl}" -D "$headers" "$@"; rc=$?\n'
        "status=$(grep -a -E '^HTTP/' \"$headers\" | tail -1 | awk '{print $2}')\n"
        'rm -f "$headers"\n'
        "fail=no  # a call with -f/--fail answers through its exit code\n"
        'for a in "$@"; do\n'
        '  case "$a" in --fail|--fail-with-body) fail=yes ;; --*) ;; -*f*) fail=yes ;; esac\n'
        "done\n"
        'url=none; for a in "$@"; do case "$a" in http://*|https://*) url="$a" ;; esac; done\n'
        f'echo "${{status:-none}} $fail $url" >> "{statuses}"\n'
        "exit $rc\n"
    )
    shim.chmod(0o755)
    run_env = dict(os.environ)
    run_env.update(env)
    run_env.update(
        {
            "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
            "PYTHONPATH": str(ROOT),
            "DOC_STATUSES": str(statuses),
        }
    )
    return work, run_env


def pointed_at(text: str, server: Server, scratch: Path) -> str:
    """The block with its ports the test server's and its /tmp/ files in a folder of this run's
    (a shared /tmp may hold another user's files of the same names, or a stale one that would
    hide a block's dependence on an earlier one)."""
    http_port = server.url.rsplit(":", 1)[1]
    grpc_port = server.grpc_target.rsplit(":", 1)[1]
    return (
        text.replace("127.0.0.1:3000", f"127.0.0.1:{http_port}")
        .replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
        .replace("/tmp/", f"{scratch}/")
    )


@pytest.mark.models
@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
def test_readme_block_runs_as_written(block: Block, doc_server) -> None:
    if block.skip_reason:
        pytest.skip(f"README.md:{block.line}: {block.skip_reason}")
    server, work, env = doc_server
    statuses = Path(env["DOC_STATUSES"])
    statuses.write_text("")
    code = pointed_at(block.text, server, work / "tmp")
    if RUNNABLE[block.lang] == "bash":
        command = ["bash", "-c", "set -eo pipefail\n" + code]
    else:
        command = [sys.executable, "-c", code]
    result = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    where = f"README.md:{block.line} ({block.section})"
    output = f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{where} exited {result.returncode}\n{output}"
    shown = shown_statuses(code)
    calls = [line.split(" ", 2) for line in statuses.read_text().splitlines() if line.strip()]
    for status, fail, url in calls:
        if fail == "yes":
            continue
        assert status.isdigit(), f"{where}: a curl call got no HTTP answer ({url})\n{output}"
        expected = shown.get(url)
        if expected is None:
            assert int(status) < 400, f"{where}: {url} answered {status}, not shown\n{output}"
        else:
            assert int(status) == expected, f"{where}: {url} answered {status}, shown {expected}"
    answered = {url for _, _, url in calls}
    missing = set(shown) - answered
    assert not missing, f"{where}: the block shows answers of {sorted(missing)}, never called"


def shown_statuses(code: str) -> dict[str, int]:
    """URL -> the status a block shows for it: a `# -> NNN ...` comment right after a command
    is that command's answer."""
    shown: dict[str, int] = {}
    url = None
    command = ""
    for line in code.splitlines():
        stripped = line.strip()
        match = SHOWN_STATUS.match(stripped)
        if match and url is not None:
            shown[url] = int(match.group(1))
        if stripped.startswith("#"):
            continue
        command = command + " " + line if command.endswith("\\") else line
        urls = URL.findall(command)
        url = urls[-1] if urls else None
    return shown


def test_a_shown_status_belongs_to_the_command_before_it() -> None:
    code = (
        "curl -s http://h:1/a\n# -> {...}\ncurl -s -X POST \\\n  'http://h:1/b?x=1&y=2'\n"
        "# -> 422 {...}\n#    more\ncurl -s http://h:1/c  # note\n"
    )
    assert shown_statuses(code) == {"http://h:1/b?x=1&y=2": 422}


@pytest.mark.models
def test_the_sample_inputs_answer_as_examples_readme_says(doc_server) -> None:
    import requests

    server, _, _ = doc_server
    examples = ROOT / "examples"

    def post(path: str, name: str) -> dict:
        with (examples / name).open("rb") as sample:
            answer = requests.post(f"{server.url}{path}", files={"image": sample}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    digit = post("/v1/classify?model=digits-cnn", "digit.png")
    assert (digit["predictions"][0]["label"], digit["in_domain"]) == ("7", True)
    assert post("/v1/caption", "scene.png")["caption"] in (
        "a yellow triangle left of a green square",
        "a green square right of a yellow triangle",
    )
    assert post("/v1/classify", "coffee.jpg")["predictions"][0]["label"] == "espresso"
    assert post("/v1/classify?model=digits-cnn", "coffee.jpg")["in_domain"] is False
    assert post("/v1/caption", "coffee.jpg")["in_domain"] is False
    assert "cat" in post("/v1/classify", "cat.jpg")["predictions"][0]["label"]
    with (examples / "speech.wav").open("rb") as sample:
        heard = requests.post(f"{server.url}/v1/transcribe", files={"audio": sample}, timeout=60)
    assert (heard.json()["text"], heard.json()["in_domain"]) == ("turn on the lights", True)
    check = [sys.executable, str(examples / "make_samples.py"), "--check"]
    assert subprocess.run(check, capture_output=True, timeout=120).returncode == 0
