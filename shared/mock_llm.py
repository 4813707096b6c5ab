"""The keyword mock: answers when no LLM is reachable, in the language of the message (the agent's
own when the message does not say) and the agent's grammatical gender where the language needs it.

Keywords match whole words, or the start of a word for stems (``допомож`` matches ``допоможи``);
never a bare substring, so "this" or "which" is not a greeting.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.contracts import Gender
from shared.llm import Completion, ToolCall, ToolSpec

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
# "ask Helion …", "запитай Helion …": the mock hands the message on, so a handoff works without an LLM
_ASK = re.compile(
    r"\b(?:ask|запитай|запитайте|спитай|спитайте)\s+(?P<name>[\w-]+)\s*[:,]?\s*(?P<note>[^,.;!?]*)",
    re.IGNORECASE | re.UNICODE | re.DOTALL,
)
_PHASE2 = re.compile(r"\b(phase|фаз\w{0,3})\s*(2|ii|two|два|друга)\b", re.IGNORECASE | re.UNICODE)

# A text is one string, or one per grammatical gender (None: an impersonal phrasing) where the
# language puts the speaker's gender into the words.
_REPLIES: dict[str, dict[str, str | dict[Gender | None, str]]] = {
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
        "tool_ok": "Done: {tool} worked{about}.",
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
        "default": {
            "masculine": "Зрозумів. Я прочитав ваше повідомлення; без мовної моделі можу поки що "
            "відповідати лише коротко.",
            "feminine": "Зрозуміла. Я прочитала ваше повідомлення; без мовної моделі можу поки що "
            "відповідати лише коротко.",
            None: "Зрозуміло. Ваше повідомлення прочитано; без мовної моделі можу поки що відповідати лише коротко.",
        },
        "tool_ok": "Готово: {tool} виконано{about}.",
        "tool_failed": {
            "masculine": "Я спробував {tool}, але не вийшло: {error}",
            "feminine": "Я спробувала {tool}, але не вийшло: {error}",
            None: "Не вдалося виконати {tool}: {error}",
        },
    },
}
# The tool errors the runtime writes itself (shared/tools.py, this module), by a fragment of their
# text; any other error (toolcore's own words) gets the generic phrase, never English mid-sentence.
_TOOL_ERRORS = {
    "uk": (
        ("not permitted by policy", "політика доступу цього не дозволяє"),
        ("toolcore is not configured", "сервіс інструментів (toolcore) не налаштовано"),
        ("no tool named", "такого інструмента в мене немає"),
        ("arguments must be", "інструмент отримав неправильні аргументи"),
        ("is not mapped to a toolcore tool", "інструмент не підключено до toolcore"),
        ("not run: at most", "забагато викликів інструментів за одне повідомлення"),
        ("unreadable tool result", "відповідь інструмента неможливо прочитати"),
        ("toolcore:", "сервіс інструментів не відповів як слід"),
    ),
}
_TOOL_ERROR_GENERIC = {"uk": "інструмент повернув помилку"}


def language(text: str, default: str | None = None) -> str:
    """'uk' when the text is mostly Cyrillic, 'en' when mostly Latin; when it does not say, the
    default if the mock speaks it, else 'en'."""
    cyrillic, latin = len(_CYRILLIC.findall(text)), len(_LATIN.findall(text))
    if cyrillic != latin:
        return "uk" if cyrillic > latin else "en"
    return default if default in _REPLIES else "en"


def category(text: str) -> str:
    if _PHASE2.search(text):
        return "phase2"
    words = [w.lower() for w in _WORD.findall(text)]
    for name, whole, stems in _KEYWORDS:
        if any(w in whole or w.startswith(stems) for w in words):
            return name
    return "question" if "?" in text else "default"


def _text(lang: str, key: str, gender: Gender | None) -> str:
    text = _REPLIES[lang][key]
    return text if isinstance(text, str) else text.get(gender, text[None])


def tool_error(error: Any, lang: str) -> str:
    """A tool's error in the reply's language."""
    error = str(error or "")
    if lang not in _TOOL_ERRORS:
        return error
    return next((said for fragment, said in _TOOL_ERRORS[lang] if fragment in error), _TOOL_ERROR_GENERIC[lang])


_QUOTES = {"en": ("\u201c", "\u201d"), "uk": ("\u00ab", "\u00bb")}


def _about(result: Any, lang: str) -> str:
    """What a tool created, when its result names it: the title and the id."""
    if not isinstance(result, dict):
        return ""
    title = result.get("title")
    ident = next((v for k, v in result.items() if k == "id" or k.endswith("_id")), None)
    opening, closing = _QUOTES[lang]
    parts = [f"{opening}{title}{closing}"] if isinstance(title, str) else []
    parts += [f"id {ident}"] if ident is not None else []
    return f" ({', '.join(parts)})" if parts else ""


def reply(
    text: str, agent_name: str = "your agent", *, gender: Gender | None = None, default_language: str | None = None
) -> str:
    """The keyword reply to ``text``; ``default_language`` is the agent's, for a text that does not say."""
    return _text(language(text, default_language), category(text), gender).format(name=agent_name)


def _tool_answer(content: Any) -> dict[str, Any]:
    """A tool turn's JSON answer; anything else (cut short, not an object) reads as a failed tool."""
    try:
        answer = json.loads(content) if isinstance(content, str) else content
    except ValueError:
        answer = None
    return answer if isinstance(answer, dict) else {"ok": False, "error": "unreadable tool result"}


def _handoff(asked: str, tools: list[ToolSpec]) -> ToolCall | None:
    """A handoff when the message asks for an agent the handoff tool may name (by the id's name)."""
    spec = next((t for t in tools if t.name == "handoff"), None)
    if spec is None:
        return None
    targets = spec.parameters["properties"]["agent_id"]["enum"]
    for match in _ASK.finditer(asked):
        target = next((t for t in targets if t.removeprefix("agent:") == match.group("name").lower()), None)
        if target:
            note = match.group("note").strip()[:200] or None
            return ToolCall("mock_handoff", "handoff", {"agent_id": target, "note": note})
    return None


def complete(
    messages: list[dict[str, Any]],
    tools: list[ToolSpec],
    agent_name: str,
    *,
    gender: Gender | None = None,
    default_language: str | None = None,
) -> Completion:
    """The mock's next turn in a conversation: a tool call when asked for a task, the result of a
    tool once it ran (a summary is its digest), else the keyword reply."""
    asked = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if not isinstance(asked, str):
        asked = ""
    lang = language(asked, default_language)
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        answer = _tool_answer(last.get("content"))
        tool = last.get("name", "tool")
        if not answer.get("ok"):
            text = _text(lang, "tool_failed", gender).format(tool=tool, error=tool_error(answer.get("error"), lang))
        elif isinstance(answer.get("result"), str):
            text = answer["result"]
        else:
            text = _text(lang, "tool_ok", gender).format(tool=tool, about=_about(answer.get("result"), lang))
        return Completion(text)
    if handoff := _handoff(asked, tools):
        return Completion("", [handoff])
    if any(t.name == "create_task" for t in tools) and (match := _TASK.search(asked)):
        title = (match.group("en") or match.group("uk")).strip()[:200]
        return Completion("", [ToolCall("mock_call", "create_task", {"title": title})])
    return Completion(reply(asked, agent_name, gender=gender, default_language=lang))
