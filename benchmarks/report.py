"""`rise report` at scale: the HTML file's size, its build time and its load time in Chromium.

Makes synthetic run folders (base, iter1, iter2: the three evaluation modes of N problems with
K turns, responses of about --tokens tokens of word-like text, later attempts edits of the one
before or fresh ones), builds each report, and opens it in headless Chromium (the system's
`chromium` and `chromedriver`, through Selenium) --loads times, taking the median of:

- load: navigationStart -> the load event (the file parsed, Plotly's script run);
- ready: navigationStart -> every chart drawn and the trajectory browser listed (the page's
  `data-ready`);
- open episode: a click on an episode -> its attempts, diffs and the other models' drawn (the
  first click unpacks the compressed attempts of every model).

    python benchmarks/report.py            # 1000 problems x 3 models x K=5, 40 and 1000 tokens
    python benchmarks/report.py --reports runs/demo/report.html     # also time existing files
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import harness

from rise_llm.records import Episode, Turn, write_jsonl
from rise_llm.report_html import ReportConfig, write_report

CHARS_PER_TOKEN = 4.5  # English-like text under a BPE tokenizer (Llama, Mistral)


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    return ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(size)]


def response(rng: random.Random, words: list[str], tokens: int, answer: int) -> str:
    """About `tokens` tokens of word-like lines (Zipf-distributed words), ending in the answer."""
    weights = [1 / (i + 1) for i in range(len(words))]
    chars = int(tokens * CHARS_PER_TOKEN)
    lines, length = [], 0
    while length < chars:
        line = " ".join(rng.choices(words, weights, k=rng.randint(6, 14)))
        line += f" = {rng.randint(0, 999)}"
        lines.append(line)
        length += len(line) + 1
    return "\n".join([*lines, f"Answer: \\boxed{{{answer}}}"])


def edited(rng: random.Random, words: list[str], before: str, answer: int) -> str:
    """The attempt before with a few lines rewritten and the new answer (a repair)."""
    lines = before.split("\n")[:-1]
    for i in rng.sample(range(len(lines)), k=max(1, len(lines) // 5)):
        lines[i] = response(rng, words, 12, 0).split("\n")[0]
    return "\n".join([*lines, f"Answer: \\boxed{{{answer}}}"])


def evaluation(
    folder: Path, problems: int, turns: int, tokens: int, accuracy: float, seed: int
) -> None:
    """episodes.jsonl of a synthetic evaluation: no oracle, oracle (its prefixes), parallel."""
    rng = random.Random(seed)
    words = vocabulary(random.Random(0))
    episodes = []
    for p in range(problems):
        question = f"Problem {p}: " + " ".join(rng.choices(words, k=30)) + "?"
        truth = rng.randint(0, 999)
        attempts: list[Turn] = []
        for t in range(turns):
            right = rng.random() < accuracy
            answer = truth if right else rng.randint(0, 999)
            if t and rng.random() < 0.5:
                text = edited(rng, words, attempts[-1].response, answer)
            else:
                text = response(rng, words, tokens, answer)
            messages = [{"role": "user", "content": question}]
            attempts.append(Turn(t, messages, text, str(answer), 1 if right else 0, tokens))
        first = next((t for t, a in enumerate(attempts) if a.reward == 1), turns - 1)
        episodes += [
            Episode(f"p{p:05d}", "no_oracle", attempts),
            Episode(f"p{p:05d}", "oracle", attempts[: first + 1]),
        ]
        episodes += [
            Episode(f"p{p:05d}", "parallel", [a], sample=s) for s, a in enumerate(attempts)
        ]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "episodes.jsonl", episodes)


def synthetic_run(root: Path, problems: int, turns: int, tokens: int) -> Path:
    for k, accuracy in enumerate((0.3, 0.4, 0.5)):
        label = "base" if k == 0 else f"iter{k}"
        evaluation(root / label / "eval", problems, turns, tokens, accuracy, seed=k)
    return root


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1300,1800")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


OPEN_EPISODE = """
const done = arguments[arguments.length - 1];
const start = performance.now();
document.querySelector('#episode-list .episode-row').click();
const wait = () => document.querySelector('#episode-detail .column .attempt')
    ? done(performance.now() - start) : setTimeout(wait, 5);
wait();
"""


def load_times(path: Path, loads: int) -> dict[str, float]:
    """Median seconds of `loads` loads of the file, each in a fresh browser: load event, ready,
    episode opened."""
    found: dict[str, list[float]] = {"load_s": [], "ready_s": [], "open_episode_s": []}
    for _ in range(loads):
        driver = browser()
        try:
            found = _load(driver, path, found)
        finally:
            driver.quit()
    return {k: round(statistics.median(v), 3) for k, v in found.items()}


def _load(driver, path: Path, found: dict[str, list[float]]) -> dict[str, list[float]]:
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 120
    while driver.execute_script("return document.body.dataset.ready") != "1":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not ready in 120 s")
        time.sleep(0.02)
    timing = driver.execute_script(
        "const t = performance.getEntriesByType('navigation')[0];"
        "return [t.loadEventEnd, performance.now()]"
    )
    found["load_s"].append(timing[0] / 1000)
    # read when `ready` was seen: the polling adds at most 20 ms
    found["ready_s"].append(timing[1] / 1000)
    found["open_episode_s"].append(driver.execute_async_script(OPEN_EPISODE) / 1000)
    return found


def measure(run: Path, args) -> dict[str, float]:
    """The report of a run folder: its size and build time, and its load times."""
    written = write_report(ReportConfig(paths=[str(run)]))
    result = {"report_mb": round(written.bytes / 1e6, 2), "build_s": round(written.seconds, 2)}
    if not args.no_browser:
        result |= load_times(written.path, args.loads)
    return result


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=1000)
    p.add_argument("--turns", type=int, default=5, help="K")
    p.add_argument("--tokens", default="40,1000", help="response lengths to try, in tokens")
    p.add_argument("--loads", type=int, default=3, help="browser loads per file (median)")
    p.add_argument("--reports", nargs="*", default=[], help="existing report files to time too")
    p.add_argument("--no-browser", action="store_true", help="size and build time only")
    args = p.parse_args()
    harness.setup(args)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in (int(t) for t in args.tokens.split(",")):
            run = synthetic_run(Path(tmp) / f"run-{tokens}", args.problems, args.turns, tokens)
            episodes = sum(f.stat().st_size for f in run.glob("*/eval/episodes.jsonl"))
            results[f"{args.problems}x3xK{args.turns}, {tokens} tokens"] = {
                "problems": args.problems,
                "models": 3,
                "turns": args.turns,
                "tokens_per_response": tokens,
                "episodes_jsonl_mb": round(episodes / 1e6, 1),
            } | measure(run, args)
    for report in args.reports:
        results[report] = {"report_mb": round(Path(report).stat().st_size / 1e6, 2)}
        if not args.no_browser:
            results[report] |= load_times(Path(report), args.loads)
    rows = []
    columns = ["file", "episodes.jsonl MB", "report MB", "build s", "load s", "ready s", "open s"]
    for name, r in results.items():
        rows.append(
            [
                name,
                r.get("episodes_jsonl_mb"),
                r["report_mb"],
                r.get("build_s"),
                r.get("load_s"),
                r.get("ready_s"),
                r.get("open_episode_s"),
            ]
        )
    harness.print_table("rise report: size and load time (median of loads)", columns, rows)
    harness.write_result("report", args, {"settings": vars(args), "files": results})


if __name__ == "__main__":
    main()
