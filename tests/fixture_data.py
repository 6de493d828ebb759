"""A tiny data directory in the layout of ../shared/data, written by the tests themselves so that
no test needs the shared datasets: an NTREX-shaped Tibetan/Chinese/English corpus (3 sentences per
document) and CMRC 2018-, MMLU- and GSM8K-shaped files. Every text is written for semrl's tests;
none is taken from the datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CMRC_ARTICLES = [
    (
        "《山河行》是由青石和α-studio开发的游戏。",
        [("开发者是谁？", ["青石和α-studio", "青石"]), ("这是什么？", ["游戏"])],
    ),
    ("北京是中国的首都，人口众多。", [("中国的首都是哪里？", ["北京"]), ("北京人口多吗？", ["人口众多"])]),
    ("长江是中国最长的河流。", [("中国最长的河流是什么？", ["长江"])]),
    ("熊猫生活在四川的山区。", [("熊猫生活在哪里？", ["四川的山区", "四川"])]),
]
# Short modern-Chinese sentences for tests that fabricate evaluation records.
CHINESE_SENTENCES = [
    "我的母亲在田里工作。",
    "我的父亲在城里。",
    "我们家有五口人。",
    "火车早上八点出发。",
    "路很远。",
    "我们要爬到山上去。",
    "今天天气很好。",
    "明天会下雨。",
    "今年冬天很冷。",
    "我们一起吃饭吧。",
    "饭菜很好吃。",
    "有茶喝吗？",
]


class CharEncoder:
    """A stand-in sentence encoder: L2-normalised character counts hashed into 64 dimensions."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64))
        for row, text in enumerate(texts):
            for ch in text:
                out[row, ord(ch) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


MMLU_SUBJECTS = ["astronomy", "anatomy", "virology"]
GSM8K_ROWS = [
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = 5\n#### 5"),
    ("A box holds 12 pens. How many pens are in 3 boxes?", "12 * 3 = 36\n#### 36"),
    ("Sara had 1,000 dollars and spent 250. How much is left?", "1000 - 250 = 750\n#### 750"),
    ("There are 7 days in a week. How many days are in 2 weeks?", "7 * 2 = 14\n#### 14"),
    ("A cake is cut into 8 pieces and 3 are eaten. How many remain?", "8 - 3 = 5\n#### 5"),
    ("Each of 4 friends has 6 marbles. How many marbles in total?", "4 * 6 = 24\n#### 24"),
]


# (Tibetan, Chinese) sentence pairs the training tests train the tiny model on: semrl's own.
TRAINING_PAIRS = [
    ("བཀྲ་ཤིས་བདེ་ལེགས།", "吉祥如意。"),
    ("ཐུགས་རྗེ་ཆེ།", "谢谢。"),
    ("དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", "今天天气很好。"),
    ("ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།", "我们明天去拉萨。"),
    ("ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།", "他买了一本新书。"),
    ("སློབ་ཕྲུག་ཚོ་སློབ་གྲྭར་འགྲོ་གི་འདུག", "学生们正在去学校。"),
    ("ཨ་མས་ཇ་བཟོས་སོང་།", "妈妈煮了茶。"),
    ("ང་ཚོའི་ཁྱིམ་དུ་ཁྱི་གཅིག་ཡོད།", "我们家有一只狗。"),
]

# (document, Tibetan, Chinese, English): semrl's own sentences, not taken from any dataset.
NTREX_LIKE_PAIRS = [
    ("greet", "བཀྲ་ཤིས་བདེ་ལེགས།", "吉祥如意。", "Good luck and happiness."),
    ("greet", "ཁྱེད་རང་སྐུ་གཟུགས་བདེ་པོ་ཡིན་པས།", "你身体好吗？", "Are you well?"),
    ("greet", "ཐུགས་རྗེ་ཆེ།", "谢谢。", "Thank you."),
    ("self", "ང་སློབ་མ་ཡིན།", "我是学生。", "I am a student."),
    ("self", "ང་ལ་དེབ་གཅིག་ཡོད།", "我有一本书。", "I have a book."),
    ("self", "ང་ལྷ་སར་འགྲོ་གི་ཡིན།", "我要去拉萨。", "I am going to Lhasa."),
    ("weather", "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", "今天天气很好。", "The weather is good today."),
    ("weather", "སང་ཉིན་ཆར་པ་འབབ་ཀྱི་རེད།", "明天会下雨。", "It will rain tomorrow."),
    ("weather", "ད་ལོ་དགུན་ཁ་གྲང་མོ་འདུག", "今年冬天很冷。", "This winter is cold."),
    ("food", "ང་ཚོ་མཉམ་དུ་ཁ་ལག་ཟ་རོགས།", "我们一起吃饭吧。", "Let us eat together."),
    ("food", "ཁ་ལག་ཞིམ་པོ་འདུག", "饭菜很好吃。", "The food is tasty."),
    ("food", "ཇ་འཐུང་རྒྱུ་ཡོད་དམ།", "有茶喝吗？", "Is there tea to drink?"),
    ("school", "ཁོང་དགེ་རྒན་ཡིན།", "他是老师。", "He is a teacher."),
    ("school", "སློབ་གྲྭ་ཆེན་པོ་ཞིག་འདུག", "有一所很大的学校。", "There is a big school."),
    ("school", "སློབ་མ་ཚོས་ཡི་གེ་སློབ་ཀྱི་ཡོད།", "学生们在学习文字。", "The students are learning to write."),
    ("family", "ངའི་ཨ་མ་ཞིང་ཁར་ལས་ཀ་བྱེད་ཀྱི་ཡོད།", "我的母亲在田里工作。", "My mother works in the fields."),
    ("family", "ངའི་ཨ་ཕ་གྲོང་ཁྱེར་དུ་ཡོད།", "我的父亲在城里。", "My father is in the city."),
    ("family", "ང་ཚོའི་ཁྱིམ་ཚང་ལ་མི་ལྔ་ཡོད།", "我们家有五口人。", "There are five people in our family."),
    ("travel", "རླངས་འཁོར་སྔ་དྲོ་ཆུ་ཚོད་བརྒྱད་པར་འགྲོ་གི་རེད།", "火车早上八点出发。", "The train leaves at eight in the morning."),
    ("travel", "ལམ་ཁ་རིང་པོ་འདུག", "路很远。", "The road is long."),
    ("travel", "ང་ཚོ་རི་བོའི་སྟེང་དུ་འཛེག་གི་ཡིན།", "我们要爬到山上去。", "We will climb the mountain."),
    ("market", "ཁྲོམ་ར་ལ་མི་མང་པོ་འདུག", "市场上有很多人。", "There are many people at the market."),
    ("market", "འདི་གོང་ཚད་ག་ཚོད་རེད།", "这个多少钱？", "How much is this?"),
    ("market", "ཚལ་ལྡུམ་གསར་པ་ཉོ་དགོས།", "要买新鲜的蔬菜。", "We need to buy fresh vegetables."),
    ("nature", "མཚོ་འདི་ཧ་ཅང་གཙང་མ་འདུག", "这个湖非常干净。", "This lake is very clean."),
    ("nature", "རི་བོའི་སྟེང་ལ་ཁ་བ་འདུག", "山上有雪。", "There is snow on the mountain."),
    ("nature", "ཉི་མ་ཤར་གྱི་འདུག", "太阳升起来了。", "The sun has risen."),
    ("work", "ཁོང་ཚོ་སྨན་ཁང་དུ་ལས་ཀ་བྱེད་ཀྱི་ཡོད།", "他们在医院工作。", "They work at the hospital."),
    ("work", "ལས་ཀ་འདི་མྱུར་དུ་ཚར་དགོས།", "这项工作要尽快完成。", "This work must be finished soon."),
    ("work", "ཚོགས་འདུ་ཕྱི་དྲོ་འཚོགས་ཀྱི་རེད།", "会议下午举行。", "The meeting is in the afternoon."),
    ("health", "སྨན་པས་ནད་པ་ལ་བལྟས་སོང་།", "医生给病人看了病。", "The doctor saw the patient."),
    ("health", "ཆུ་མང་པོ་འཐུང་དགོས།", "要多喝水。", "Drink plenty of water."),
    ("health", "ཉལ་ཁ་ཡག་པོ་བྱས་ན་ལུས་པོ་བདེ་པོ་ཡོང་།", "睡得好身体就会健康。", "Good sleep keeps the body healthy."),
    ("books", "དེབ་འདི་ཧ་ཅང་ཡག་པོ་འདུག", "这本书非常好。", "This book is very good."),
    ("books", "ངས་དཔེ་མཛོད་ཁང་ནས་དེབ་གཉིས་ཁྱེར་བྱུང་།", "我从图书馆借了两本书。", "I borrowed two books from the library."),
    ("books", "ཁོང་གིས་ལོ་རྒྱུས་ཀྱི་དེབ་ཅིག་བྲིས་པ་རེད།", "他写了一本历史书。", "He wrote a history book."),
]


def write_ntrex_like_dir(root: Path) -> Path:
    """`root/ntrex128_bo_zh/` with NTREX's file names: line-aligned bod / zho-CN / eng-US files
    and a document id per line (12 documents of 3 sentences)."""
    folder = root / "ntrex128_bo_zh"
    folder.mkdir(parents=True)
    files = {
        "newstest2019-ref.bod.txt": [p[1] for p in NTREX_LIKE_PAIRS],
        "newstest2019-ref.zho-CN.txt": [p[2] for p in NTREX_LIKE_PAIRS],
        "newstest2019-ref.eng-US.txt": [p[3] for p in NTREX_LIKE_PAIRS],
        "DOCUMENT_IDS.tsv": [f"fixture.{p[0]}" for p in NTREX_LIKE_PAIRS],
    }
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_fixture_data_dir(root: Path) -> Path:
    """A data directory holding the NTREX-shaped corpus and the general benchmarks."""
    write_general_data_dir(root)
    return write_ntrex_like_dir(root)


def write_general_data_dir(root: Path) -> Path:
    squad = {"version": "v1.0", "data": []}
    for a, (context, qas) in enumerate(CMRC_ARTICLES):
        squad["data"].append(
            {
                "paragraphs": [
                    {
                        "id": f"DEV_{a}",
                        "context": context,
                        "qas": [
                            {
                                "question": q,
                                "id": f"DEV_{a}_QUERY_{k}",
                                "answers": [{"text": t, "answer_start": max(0, context.find(t))} for t in answers],
                            }
                            for k, (q, answers) in enumerate(qas)
                        ],
                    }
                ],
                "id": f"DEV_{a}",
            }
        )
    (root / "cmrc2018_dev").mkdir(parents=True)
    (root / "cmrc2018_dev" / "cmrc2018_dev.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")

    (root / "mmlu_test").mkdir()
    lines = [
        json.dumps(
            {
                "question": "question",
                "answer_a": "A",
                "answer_b": "B",
                "answer_c": "C",
                "answer_d": "D",
                "correct_answer": "answer",
                "topic": "topic",
            }
        )
    ]  # a stray header row
    for i in range(9):
        lines.append(
            json.dumps(
                {
                    "question": f"Question {i} about {MMLU_SUBJECTS[i % 3]}?",
                    "answer_a": f"a{i}",
                    "answer_b": f"b{i}",
                    "answer_c": f"c{i}",
                    "answer_d": f"d{i}",
                    "correct_answer": "ABCD"[i % 4],
                    "topic": MMLU_SUBJECTS[i % 3],
                }
            )
        )
    (root / "mmlu_test" / "mmlu_test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    (root / "gsm8k_test").mkdir()
    (root / "gsm8k_test" / "test.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM8K_ROWS), encoding="utf-8"
    )
    return root


def write_char_tokenizer(out_dir: Path) -> Path:
    """A character-level tokenizer covering every Tibetan, CJK-unified and ASCII character (one
    token per character): the tokenizer of a tiny static encoder that can tell Tibetan and
    Chinese letters apart (the byte-level tiny tokenizer splits Chinese into shared byte tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [
        chr(c) for c in [*range(0x20, 0x7F), *range(0x0F00, 0x1000), *range(0x3000, 0x3040), *range(0x4E00, 0x9FB0)]
    ]
    vocab = {"[UNK]": 0, "[PAD]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(out_dir)
    return out_dir


def serve_downloads(monkeypatch, served: dict[str, bytes], cache: Path) -> dict:
    """Replace `semrl.data.download.fetch` by a fake server of `served` (URL -> bytes; any other URL
    is a 404) with the download cache in `cache`; the returned state records every URL fetched."""
    from semrl.core.errors import DataError
    from semrl.data import download

    state: dict = {"served": served, "fetched": [], "cache": cache}

    def fetch(url: str) -> bytes:
        state["fetched"].append(url)
        if url not in served:
            raise DataError(f"download of {url} failed (404)")
        return served[url]

    monkeypatch.setattr(download, "fetch", fetch)
    monkeypatch.setenv("SEMRL_CACHE_DIR", str(cache))
    return state
