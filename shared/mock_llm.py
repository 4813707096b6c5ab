"""The keyword mock: answers when no LLM is reachable, in the language of the message.

Keywords match whole words, or the start of a word for stems (``допомож`` matches ``допоможи``);
never a bare substring, so "this" or "which" is not a greeting.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.llm import Completion, ToolCall

_WORD = re.compile(r"\w+", re.UNICODE)
_CYRILLIC = re.compile(r"[а-яіїєґё]", re.IGNORECASE)
_LATIN = re.compile(r"[a-z]", re.IGNORECASE)

# category -> (whole words, stems). Checked in this order: the most specific request first.
_KEYWORDS: list[tuple[str, frozenset[str], tuple[str, ...]]] = [
    ("phase2", frozenset(), ()),  # a phrase, matched below
    ("help", frozenset({"sos"}), ("help", "допомож", "допомог", "підкаж")),
    ("thanks", frozenset({"thx", "ty", "спасибі"}), ("thank", "дяку", "дячн")),
    (
        "greeting",
        frozenset({"hi", "hello", "hey", "hiya", "greetings", "привіт", "вітаю", "агов", "здрастуйте"}),
        ("привітик", "вітан", "добрий", "доброго"),
    ),
]
# "create a task: …", "створи задачу: …": the mock asks for create_task, so tools work without an LLM
_TASK = re.compile(
    r"\b(?:create|make|add|open)\s+(?:a\s+|new\s+)?task\s*:\s*(?P<en>.+)"
    r"|(?:створи|створіть|додай|додайте|зроби)\s+(?:нову\s+)?задачу\s*:\s*(?P<uk>.+)",
    re.IGNORECASE | re.UNICODE | re.DOTALL,
)
_PHASE2 = re.compile(r"\b(phase|фаз\w{0,3})\s*(2|ii|two|два|друга)\b", re.IGNORECASE | re.UNICODE)

_REPLIES = {
    "en": {
        "greeting": "Hello! I'm {name}. Tell me what you're working on and I'll do my best to help.",
        "help": "Happy to help. I can answer questions about this DAO, recall what we discussed, "
        "and keep track of tasks. What do you need?",
        "thanks": "You're welcome! Ping me any time.",
        "phase2": "Right now I'm running in Phase 2: I read the channel and my memory, but my answers "
        "come from a simple keyword mode until a language model is connected.",
        "question": "Good question. I don't have a language model connected right now, so I can't give "
        "a full answer yet; I'll note it and a teammate may pick it up.",
        "default": "Got it. I've read your message; with no language model connected I can only give "
        "short replies for now.",
        "tool_ok": "Done: {tool} worked.",
        "tool_failed": "I tried {tool}, but it did not work: {error}",
    },
    "uk": {
        "greeting": "Привіт! Я {name}. Розкажіть, над чим працюєте, і я спробую допомогти.",
        "help": "Із задоволенням допоможу. Можу відповісти на питання про цю DAO, пригадати, що ми "
        "обговорювали, і стежити за задачами. Що потрібно?",
        "thanks": "Будь ласка! Звертайтеся будь-коли.",
        "phase2": "Зараз я працюю у Фазі 2: читаю канал і свою пам'ять, але відповідаю у простому "
        "режимі ключових слів, доки не підключено мовну модель.",
        "question": "Гарне питання. Мовна модель зараз не підключена, тож повної відповіді я поки не "
        "дам; я занотую його, і хтось із команди зможе відповісти.",
        "default": "Зрозумів. Я прочитав ваше повідомлення; без мовної моделі можу поки що відповідати лише коротко.",
        "tool_ok": "Готово: {tool} виконано.",
        "tool_failed": "Я спробував {tool}, але не вийшло: {error}",
    },
}


def language(text: str) -> str:
    """'uk' when the text is mostly Cyrillic, else 'en'."""
    return "uk" if len(_CYRILLIC.findall(text)) > len(_LATIN.findall(text)) else "en"


def category(text: str) -> str:
    if _PHASE2.search(text):
        return "phase2"
    words = [w.lower() for w in _WORD.findall(text)]
    for name, whole, stems in _KEYWORDS:
        if any(w in whole or w.startswith(stems) for w in words):
            return name
    return "question" if "?" in text else "default"


def reply(text: str, agent_name: str = "your agent") -> str:
    return _REPLIES[language(text)][category(text)].format(name=agent_name)


def _tool_answer(content: Any) -> dict[str, Any]:
    """A tool turn's JSON answer; anything else (cut short, not an object) reads as a failed tool."""
    try:
        answer = json.loads(content) if isinstance(content, str) else content
    except ValueError:
        answer = None
    return answer if isinstance(answer, dict) else {"ok": False, "error": "unreadable tool result"}


def complete(messages: list[dict[str, Any]], tools: list[str], agent_name: str) -> Completion:
    """The mock's next turn in a conversation: a tool call when asked for a task, the result of a
    tool once it ran (a summary is its digest), else the keyword reply."""
    asked = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if not isinstance(asked, str):
        asked = ""
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        answer = _tool_answer(last.get("content"))
        if not answer.get("ok"):
            text = _REPLIES[language(asked)]["tool_failed"].format(
                tool=last.get("name", "tool"), error=answer.get("error")
            )
        elif isinstance(answer.get("result"), str):
            text = answer["result"]
        else:
            text = _REPLIES[language(asked)]["tool_ok"].format(tool=last.get("name", "tool"))
        return Completion(text)
    if "create_task" in tools and (match := _TASK.search(asked)):
        title = (match.group("en") or match.group("uk")).strip()[:200]
        return Completion("", [ToolCall("mock_call", "create_task", {"title": title})])
    return Completion(reply(asked, agent_name))
