"""The LLM-judge pairwise win rate: the bias-cancelling arithmetic (stub judges, only here), the
tiny model as a local judge on hand-made outputs, an OpenAI-compatible endpoint served by a local
http.server thread, `semrl judge` and clear errors."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from semrl.cli import main
from semrl.config.data import TaskConfig
from semrl.config.evaluation import JudgeConfig
from semrl.config.experiment import ExperimentConfig, load_config
from semrl.core.errors import ConfigError, ModelError
from semrl.eval.judge import (
    EndpointJudge,
    JudgeReply,
    LocalJudge,
    PairItem,
    combine,
    compare_outputs,
    judge_summary,
    judge_template,
    label_logprobs,
    parse_verdict,
    summarize,
)
from semrl.pipeline.judge import run_judge

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TASK = TaskConfig()
TEMPLATE = judge_template(JudgeConfig(), TASK)
_SHOWN = re.compile(r"^Translation A: (.*)\nTranslation B: (.*)$", re.MULTILINE)


def shown(prompt: str) -> tuple[str, str]:
    """The outputs a default-template prompt shows as A and as B."""
    match = _SHOWN.search(prompt)
    assert match, prompt
    return match.group(1), match.group(2)


def prefer_good(prompt: str) -> str:
    """A content judge: the output containing 'good' wins, else tie."""
    a, b = shown(prompt)
    return "A" if "good" in a and "good" not in b else "B" if "good" in b and "good" not in a else "tie"


class StubJudge:
    """Answers from a rule and records every prompt (unit tests of the arithmetic only)."""

    def __init__(self, rule) -> None:
        self.rule, self.prompts = rule, []
        self.description = {"kind": "stub", "model": "stub", "mode": "generate"}

    def __call__(self, prompts: Sequence[str]) -> list[JudgeReply]:
        self.prompts += list(prompts)
        return [JudgeReply(parse_verdict(self.rule(p)), text=self.rule(p)) for p in prompts]


def _items() -> list[PairItem]:
    return [
        PairItem("1", "src1", "ref1", "good one", "bad one"),
        PairItem("2", "src2", "ref2", "good two", "bad two"),
        PairItem("3", "src3", "ref3", "bad three", "good three"),
        PairItem("4", "src4", "ref4", "same", "same"),
        PairItem("5", "src5", "ref5", "meh five", "meh 5"),
    ]


# ---------------------------------------------------------------------------------------------
# bias-cancelling arithmetic (stub judges)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ab", "ba", "outcome", "inconsistent"),
    [
        ("A", "B", "win", False),  # first method preferred in both orders
        ("B", "A", "loss", False),  # second method preferred in both orders
        ("A", "A", "tie", True),  # always position A: position bias
        ("B", "B", "tie", True),  # always position B
        ("A", "tie", "tie", False),  # one order undecided
        ("tie", "tie", "tie", False),
        ("A", None, "tie", False),  # an unparsed verdict never makes a win
    ],
)
def test_combine_needs_both_orders_to_agree(ab: str | None, ba: str | None, outcome: str, inconsistent: bool) -> None:
    assert combine(ab, ba) == (outcome, inconsistent)


def test_content_judge_wins_and_losses_asked_in_both_orders() -> None:
    judge = StubJudge(prefer_good)
    outcomes = compare_outputs(judge, _items(), TEMPLATE, TASK)
    assert [o.outcome for o in outcomes] == ["win", "win", "loss", "tie", "tie"]
    # every non-identical pair asked twice, once per order; identical outputs not asked
    assert len(judge.prompts) == 8
    asked = [shown(p) for p in judge.prompts]
    for it in _items()[:3] + _items()[4:]:
        assert (it.first, it.second) in asked and (it.second, it.first) in asked
    s = summarize(outcomes, n_resamples=200)
    assert s["counts"] == {"win": 2, "tie": 2, "loss": 1, "inconsistent": 0, "identical": 1, "unparsed": 0}
    assert s["n"] == 5 and s["judge_prompts"] == 8
    assert sum(s["rates"][k]["estimate"] for k in ("win", "tie", "loss")) == pytest.approx(1.0)
    assert s["rates"]["win"]["estimate"] == pytest.approx(0.4)
    for iv in s["rates"].values():
        assert 0.0 <= iv["low"] <= iv["estimate"] <= iv["high"] <= 1.0
    assert s["first_position_rate"] == pytest.approx(0.5)  # a content judge has no position bias


def test_position_biased_judge_scores_no_wins() -> None:
    outcomes = compare_outputs(StubJudge(lambda p: "A"), _items(), TEMPLATE, TASK)
    s = summarize(outcomes, n_resamples=200)
    assert s["counts"]["win"] == s["counts"]["loss"] == 0
    assert s["counts"]["inconsistent"] == 4 and s["inconsistent_rate"] == pytest.approx(0.8)
    assert s["first_position_rate"] == 1.0


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("A", "A"),
        (" B.", "B"),
        ("Translation B is better", "B"),
        ("**A**", "A"),
        ("Tie", "tie"),
        ("<think>A or B? B is fluent</think>A", "A"),
        ("a good question", None),
        ("I cannot tell", None),
    ],
)
def test_parse_verdict(text: str, verdict: str | None) -> None:
    assert parse_verdict(text) == verdict


def test_unparsed_replies_are_counted_and_never_win() -> None:
    outcomes = compare_outputs(StubJudge(lambda p: "no idea"), _items()[:2], TEMPLATE, TASK)
    s = summarize(outcomes, n_resamples=200)
    assert s["counts"]["unparsed"] == 4 and s["counts"]["tie"] == 2 and s["first_position_rate"] is None


def test_template_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"evaluation.judge.template: must contain \{output_b\}"):
        judge_template(JudgeConfig(template="{output_a} {source}"), TASK)
    with pytest.raises(ConfigError, match="unknown placeholder"):
        judge_template(JudgeConfig(template="{output_a} {output_b} {hypothesis}"), TASK)


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ("{enabled: true}", "evaluation.judge.model is not set"),
        ("{enabled: true, model: m, url: 'http://x/v1', mode: logprob}", "needs a local model"),
        ("{pairs: [[sft, sft]]}", "two different methods"),
        ("{url: 'localhost:8000'}", "http://"),
        ("{pairs: [[grpo, dpo]]}", "evaluation.judge.pairs"),
    ],
)
def test_bad_judge_config_is_named(tmp_path: Path, judge: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"evaluation:\n  judge: {judge}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# the tiny model as a local judge
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_judge_parts() -> tuple[Any, Any]:
    from semrl.config.model import ModelConfig
    from semrl.models import load_policy

    return load_policy(ModelConfig(name="tiny"))


def test_label_logprobs_batched_with_padding_equal_one_by_one(tiny_judge_parts: tuple[Any, Any]) -> None:
    import torch

    model, tok = tiny_judge_parts
    labels = [tok.encode(" " + lab, add_special_tokens=False) for lab in ("A", "B", "tie")]
    assert max(len(lab) for lab in labels) > 1  # the tiny tokenizer splits labels: the multi-token path
    prompts = [tok(p)["input_ids"] for p in ("short Answer:", "a much longer prompt, with more words in it. Answer:")]
    batched = label_logprobs(model, prompts, labels, tok.pad_token_id, batch_size=8)
    for prompt, row in zip(prompts, batched):
        for lab, value in zip(labels, row):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([prompt + lab])).logits[0].float(), -1)
            expected = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(lab))
            assert value == pytest.approx(expected, abs=1e-4)


def test_local_judge_modes_follow_the_chat_template(tiny_judge_parts: tuple[Any, Any]) -> None:
    import copy

    model, tok = tiny_judge_parts
    prompts = [
        TEMPLATE.format(
            source="s",
            reference="r",
            output_a="x",
            output_b="y",
            source_lang_name="Tibetan",
            target_lang_name="Chinese",
        )
    ]
    # a base model generating on request: replies are kept as text and parsed (junk from the tiny model)
    generated = LocalJudge(model, tok, mode="generate", max_tokens=4)(prompts)
    assert len(generated) == 1 and isinstance(generated[0].text, str) and generated[0].probs is None
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Verdict:{% endif %}"
    )
    assert LocalJudge(model, chat_tok).mode == "generate"  # auto: chat models generate
    scored = LocalJudge(model, chat_tok, mode="logprob")
    assert scored.label_ids[0] == chat_tok.encode("A", add_special_tokens=False)  # labels start the reply: no space
    reply = scored(prompts)[0]
    assert reply.verdict in ("A", "B", "tie") and sum(reply.probs.values()) == pytest.approx(1.0, abs=1e-3)


class SpyJudge(LocalJudge):
    """The real tiny judge, recording what it was asked."""

    prompts: list[str]

    def __call__(self, prompts: Sequence[str]) -> list[JudgeReply]:
        self.prompts = getattr(self, "prompts", []) + list(prompts)
        return super().__call__(prompts)


SOURCES = ["ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།", "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", "ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།", "བཀྲ་ཤིས་བདེ་ལེགས།"]
REFERENCES = ["我们明天去拉萨。", "今天天气很好。", "他买了一本新书。", "吉祥如意。"]
OUTPUTS = {
    "grpo": ["我们明天去拉萨。", "今天天气不错。", "他买了新书。", "吉祥如意。"],
    "sft": ["明天我们去北京。", "今天下雨了。", "他买了一本新书。", "吉祥如意。"],
    "cold_start": ["我们", "天气", "书", "吉祥"],
}


def _hand_made_run(
    run_dir: Path,
    judge: str = "{enabled: true, model: tiny}",
    methods: Sequence[str] = tuple(OUTPUTS),
    outputs: dict[str, list[str]] = OUTPUTS,
) -> ExperimentConfig:
    """A run directory holding only what the judge reads: config.yaml and eval/<method>.json."""
    config = load_config(CONFIGS / "tiny.yaml", overrides=[f"evaluation.judge={judge}"])
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    for method in methods:
        rows = [
            {"id": f"ex{i}", "source": s, "reference": r, "output": o}
            for i, (s, r, o) in enumerate(zip(SOURCES, REFERENCES, outputs[method]))
        ]
        (run_dir / "eval" / f"{method}.json").write_text(
            json.dumps({"method": method, "eval_key": f"key-{method}", "outputs": rows}, ensure_ascii=False),
            encoding="utf-8",
        )
    return config


def test_tiny_local_judge_asks_both_orders_and_writes_judge_json(
    tmp_path: Path, tiny_judge_parts: tuple[Any, Any]
) -> None:
    config = _hand_made_run(tmp_path)
    model, tok = tiny_judge_parts
    spy = SpyJudge(model, tok, name="tiny")
    record = run_judge(config, tmp_path, log=lambda m: None, judge=spy)
    assert spy.mode == "logprob"  # no chat template: labels are scored
    assert set(record["pairs"]) == {"grpo-sft", "grpo-cold_start"}
    # grpo and sft share one identical output (ex3): 3 + 4 non-identical pairs, each asked twice
    assert len(spy.prompts) == 2 * (3 + 4)
    for i in range(3):
        a, b = OUTPUTS["grpo"][i], OUTPUTS["sft"][i]
        assert sum(shown(p) == (a, b) for p in spy.prompts) == 1 and sum(shown(p) == (b, a) for p in spy.prompts) == 1
    on_disk = json.loads((tmp_path / "eval" / "judge.json").read_text(encoding="utf-8"))
    assert on_disk["key"] == record["key"] and on_disk["eval_keys"] == {
        "cold_start": "key-cold_start",
        "grpo": "key-grpo",
        "sft": "key-sft",
    }
    for pair in on_disk["pairs"].values():
        c = pair["counts"]
        assert pair["n"] == 4 == c["win"] + c["tie"] + c["loss"] == len(pair["per_example"])
        assert pair["judge_prompts"] == 2 * (4 - c["identical"])
        for ex in pair["per_example"]:
            if not ex["identical"]:
                for order in ("ab", "ba"):
                    assert ex[order]["verdict"] in ("A", "B", "tie")
                    assert sum(ex[order]["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert on_disk["pairs"]["grpo-sft"]["counts"]["identical"] == 1


def test_semrl_judge_command_builds_the_judge_and_reuses_an_up_to_date_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _hand_made_run(tmp_path, judge="{enabled: false}", methods=("grpo", "sft"))
    # the run's config has no judge model: the command says which key to set
    assert main(["judge", str(tmp_path)]) == 2
    assert "evaluation.judge.model" in capsys.readouterr().err
    assert main(["judge", str(tmp_path), "--set", "evaluation.judge.model=tiny"]) == 0
    out = capsys.readouterr().out
    assert "grpo vs cold_start: skipped" in out and "grpo vs sft" in out
    judged = json.loads((tmp_path / "eval" / "judge.json").read_text(encoding="utf-8"))
    assert set(judged["pairs"]) == {"grpo-sft"} and judged["judge"] == {
        "kind": "local",
        "model": "tiny",
        "mode": "logprob",
    }
    assert main(["judge", str(tmp_path), "--set", "evaluation.judge.model=tiny"]) == 0
    assert "up to date" in capsys.readouterr().out
    # the report flags a judge result whose evaluations changed since
    evals = {"grpo": {"eval_key": "key-grpo"}, "sft": {"eval_key": "re-evaluated"}}
    assert (
        judge_summary(judged, evals)["stale"] and "per_example" not in judge_summary(judged, evals)["pairs"]["grpo-sft"]
    )


def test_semrl_judge_without_any_evaluated_pair_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _hand_made_run(tmp_path, methods=("grpo",))
    assert main(["judge", str(tmp_path)]) == 2
    assert "no pair in evaluation.judge.pairs" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# an OpenAI-compatible endpoint (local http.server thread, no network)
# ---------------------------------------------------------------------------------------------
class _ChatHandler(BaseHTTPRequestHandler):
    rule = staticmethod(prefer_good)
    status = 200
    fail_first = 0  # answer this many requests with HTTP 503 before serving
    delay_s = 0.0
    seen: list[dict[str, Any]] = []
    in_flight: list[int] = []  # requests being served when each request arrived, itself included

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            cls.active += 1
            cls.in_flight.append(cls.active)
            failing = len(cls.seen) <= cls.fail_first
        try:
            time.sleep(cls.delay_s)
            self._answer(body, 503 if failing else self.status)
        finally:
            with cls.lock:
                cls.active -= 1

    def _answer(self, body: dict[str, Any], status: int) -> None:
        if status != 200:
            self.send_response(status)
            self.send_header("Content-Length", "16")
            self.end_headers()
            self.wfile.write(b"model overloaded")
            return
        reply = type(self).rule(body["messages"][-1]["content"])
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def chat_server() -> Iterator[tuple[str, type[_ChatHandler]]]:
    handler = type("Handler", (_ChatHandler,), {"seen": [], "in_flight": [], "active": 0, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_judge_through_run_judge(tmp_path: Path, chat_server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = chat_server
    monkeypatch.setenv("SEMRL_TEST_JUDGE_KEY", "secret")
    config = _hand_made_run(
        tmp_path,
        judge=f"{{enabled: true, model: judge-model, url: '{url}', api_key_env: SEMRL_TEST_JUDGE_KEY, pairs: [[grpo, sft]]}}",
        methods=("grpo", "sft"),
        outputs={"grpo": ["good a", "good b", "bad c", "same"], "sft": ["bad a", "bad b", "good c", "same"]},
    )
    record = run_judge(config, tmp_path, log=lambda m: None)
    pair = record["pairs"]["grpo-sft"]
    assert pair["counts"] == {"win": 2, "tie": 1, "loss": 1, "inconsistent": 0, "identical": 1, "unparsed": 0}
    assert len(handler.seen) == 6  # 3 non-identical pairs x 2 orders
    assert {s["path"] for s in handler.seen} == {"/v1/chat/completions"}
    assert {s["auth"] for s in handler.seen} == {"Bearer secret"}
    assert {s["body"]["model"] for s in handler.seen} == {"judge-model"} and handler.seen[0]["body"]["max_tokens"] == 16
    assert record["judge"] == {
        "kind": "endpoint",
        "model": "judge-model",
        "url": url + "/chat/completions",
        "mode": "generate",
    }
    assert pair["per_example"][0]["ab"] == {"verdict": "A", "text": "A"}


def test_endpoint_position_bias_is_cancelled(chat_server) -> None:
    url, handler = chat_server
    handler.rule = staticmethod(lambda prompt: "B")
    outcomes = compare_outputs(EndpointJudge(url, "m"), _items(), TEMPLATE, TASK)
    assert [o.outcome for o in outcomes] == ["tie"] * 5 and sum(o.inconsistent for o in outcomes) == 4


def test_endpoint_http_error_is_reported(chat_server) -> None:
    url, handler = chat_server
    handler.status = 500
    with pytest.raises(ModelError, match="HTTP 500.*model overloaded"):
        EndpointJudge(url, "m")(["prompt"])


def test_endpoint_retries_a_failed_request(chat_server) -> None:
    url, handler = chat_server
    handler.rule = staticmethod(lambda prompt: "tie")
    handler.fail_first = 1
    replies = EndpointJudge(url, "m", max_retries=1)(["prompt"])
    assert [r.verdict for r in replies] == ["tie"] and len(handler.seen) == 2  # 503, then the answer
    handler.seen.clear()
    handler.fail_first = 1
    with pytest.raises(ModelError, match="HTTP 503"):
        EndpointJudge(url, "m", max_retries=0)(["prompt"])


def test_endpoint_requests_run_concurrently_within_the_bound(chat_server) -> None:
    url, handler = chat_server
    handler.delay_s = 0.2
    handler.rule = staticmethod(lambda prompt: "A" if prompt.endswith("0") else "B")
    prompts = [f"prompt {i % 2}" for i in range(8)]
    replies = EndpointJudge(url, "m", concurrency=3)(prompts)
    assert [r.verdict for r in replies] == ["A", "B"] * 4  # in the order asked
    assert max(handler.in_flight) == 3


def test_unreachable_endpoint_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        ModelError, match=f"cannot reach the judge endpoint http://127.0.0.1:{port}/v1/chat/completions"
    ):
        EndpointJudge(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5)(["prompt"])


def test_missing_api_key_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semrl.eval.judge import build_judge

    monkeypatch.delenv("SEMRL_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$SEMRL_NO_SUCH_KEY"):
        build_judge(JudgeConfig(enabled=True, model="m", url="http://127.0.0.1:1/v1", api_key_env="SEMRL_NO_SUCH_KEY"))
