"""Prompt-injection heuristics: scored rules, versioned (``custos.injection/1``).

Each rule recognises one technique, in English, German, French and Spanish, and has a weight;
a text's score is the sum of the weights of the distinct rules it matches, and it is an
injection when the score reaches the guardrail's ``threshold`` (``DEFAULT_THRESHOLD`` = 1.0).
The weights say how sure one technique alone makes us: an instruction override (``ignore all
previous instructions``) or a chat template's control tokens are enough alone; a jailbreak
persona, a question about the hidden instructions or a fake ``system:`` line need a second
signal.

A text that holds base64 is also checked once decoded (``encoded_payload``): a payload that
matches a rule there counts that rule's weight plus the rule's own.

The findings name the matched rules (kind ``injection.RULE``), never the text. A finding's
span is where the rule matched, which is how the guardrail counts it; a ``prompt_injection``
guardrail validates, it does not rewrite.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

import ahocorasick

#: Changes whenever the rules or their weights change.
RULES_VERSION: Final = "custos.injection/1"
DEFAULT_THRESHOLD: Final = 1.0


@dataclass(frozen=True, slots=True)
class InjectionRule:
    """One technique: its weight, its expression (case-insensitive) and the words, lower case,
    at least one of which every match contains (the expression runs only near them)."""

    id: str
    weight: float
    pattern: re.Pattern[str]
    triggers: tuple[str, ...]


def _rule(rule_id: str, weight: float, triggers: str, *alternatives: str) -> InjectionRule:
    joined = "|".join(f"(?:{a})" for a in alternatives)
    return InjectionRule(rule_id, weight, re.compile(joined, re.IGNORECASE),
                         tuple(triggers.split("|")))  # fmt: skip


_ALL = r"(?:all |any |every |the |your |my |these |those )*"
_PREVIOUS = (r"(?:previous|prior|preceding|above|earlier|foregoing|original|initial|system|"
             r"existing)")  # fmt: skip
_ORDERS = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|orders|commands)"

RULES: Final = (
    _rule(
        "override", 1.0,
        ("ignor|disregard|forget|skip|override|bypass|drop|vergiss|missacht|übergeh|oubli|"
         "néglige|abstraction|olvid|descart|omit"),
        # en: ignore / disregard / forget (all) previous instructions
        rf"\b(?:ignore|disregard|forget|skip|override|bypass|drop)\s+{_ALL}(?:of\s+)?{_ALL}"
        rf"{_PREVIOUS}\s+(?:\w+\s+)?{_ORDERS}",
        r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+)?(?:of\s+)?your\s+(?:\w+\s+)?"
        r"(?:rules|guidelines|policies|programming|restrictions|training|instructions)",
        r"\b(?:ignore|disregard|forget)\s+(?:all|every|any)\s+(?:\w+\s+)?(?:instructions?|"
        r"rules|directions|guidelines|prompts?)\s+(?:you\s+(?:were|have\s+been)\s+given|"
        r"(?:given|received|written)\s+(?:before|earlier|so\s+far)|before|earlier|so\s+far)",
        r"\boverride\s+(?:all|any|every|your)\s+(?:\w+\s+)?(?:policies|rules|restrictions)",
        r"\b(?:ignore|disregard|forget)\s+(?:everything|all)\s+(?:you\s+were\s+told|"
        r"(?:that\s+)?(?:was\s+)?(?:said|written)\s+)?(?:above|before|so\s+far)",
        # de: ignoriere alle vorherigen Anweisungen / vergiss deine Anweisungen (imperatives:
        # "die Anweisungen werden ignoriert" or "sie ignorierte die Regeln" are not orders)
        r"\b(?:ignorier(?:e|t)?|vergiss|vergesst|missachte|missachtet|übergeh(?:e|t)?)\s+"
        r"(?:\w+\s+){0,3}"
        r"(?:anweisungen|instruktionen|regeln|vorgaben|befehle|richtlinien)",
        # fr: ignore les instructions précédentes / oublie toutes tes instructions
        r"\b(?:ignore[rz]?|oublie[rz]?|néglige[rz]?|fais\s+abstraction\s+de)\s+(?:\w+\s+){0,3}"
        r"(?:instructions|consignes|règles|directives)",
        # es: ignora las instrucciones anteriores / olvida tus instrucciones (imperatives: "se
        # ignoran las instrucciones viejas" is a report, not an order)
        r"\b(?:ignora|ignore|ignorad|olvida|olvide|olvidad|descarta|descarte|omite|omita)\s+"
        r"(?:\w+\s+){0,3}"
        r"(?:instrucciones|indicaciones|reglas|directrices|órdenes)",
    ),
    _rule(
        "template_tokens", 1.0,
        "<|[inst]|[/inst]|<<|system>|system >",
        r"<\|im_start\|>|<\|im_end\|>|<\|system\|>|<\|endoftext\|>|<\|start_header_id\|>",
        r"\[/?INST\]|<<\s*/?SYS\s*>>|<\s*/?\s*system\s*>",
    ),
    _rule(
        "fake_system", 0.5,
        ("system|sistema|système|developer|admin|human|assistant|begin|end of"),
        r"(?:^|\n)\s*(?:#{1,3}\s*)?(?:system|sistema|système|systemnachricht|developer)"
        r"\s*(?:message|prompt|nachricht)?\s*:",
        r"(?:^|\n)\s*(?:\[|\()?(?:system|admin|developer)\s+(?:override|update|notice)",
        r"\bbegin\s+(?:new\s+)?system\s+prompt\b|\bend\s+of\s+(?:user\s+)?(?:input|prompt)\b",
    ),
    _rule(
        "fake_turns", 0.5,
        "user|human|assistant|utilisateur|usuario|benutzer|nutzer",
        r"(?:^|\n)\s*(?:user|human|assistant|ai|utilisateur|usuario|benutzer|nutzer)\s*:",
    ),
    _rule(
        "new_instructions", 0.5,
        ("new instructions|new task|new role|new rules|from now on|neue|ab jetzt|"
         "ab sofort|nouvelles|désormais|dorénavant|à partir de maintenant|nuevas|"
         "a partir de ahora|desde ahora"),
        r"\b(?:your\s+new\s+(?:instructions|task|role|rules)|new\s+instructions\s*:|"
        r"from\s+now\s+on,?\s+you\s+(?:are|will|must|shall))",
        r"\b(?:deine\s+neuen?\s+(?:anweisungen|aufgabe|regeln)|ab\s+(?:jetzt|sofort)\s+bist\s+du)",
        r"\b(?:tes\s+nouvelles\s+(?:instructions|consignes)|(?:désormais|dorénavant|à\s+partir"
        r"\s+de\s+maintenant),?\s+tu\s+(?:es|dois|vas))",
        r"\b(?:tus\s+nuevas\s+(?:instrucciones|reglas)|(?:a\s+partir\s+de\s+ahora|desde\s+ahora)"
        r",?\s+(?:eres|debes|vas))",
    ),
    _rule(
        "unrestricted_role", 1.0,
        ("unrestricted|unfiltered|uncensored|jailbroken|evil|rogue|uneingeschränkt|"
         "unzensiert|ohne regeln|böse|sans restriction|non censuré|sans filtre|malveillant|"
         "sin restricciones|sin censura|sin filtros|malvad"),
        r"\b(?:you\s+are\s+now|act\s+as|pretend\s+(?:to\s+be|you\s+are)|roleplay\s+as)\s+"
        r"(?:an?\s+)?(?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue)",
        r"\b(?:du\s+bist\s+(?:jetzt|nun)|spiele?|tu\s+so,?\s+als\s+(?:ob|wärst))\s+"
        r"(?:\w+\s+)?(?:uneingeschränkt|unzensiert|ohne\s+regeln|böse)",
        r"\b(?:tu\s+es\s+maintenant|fais\s+semblant\s+d'être|joue\s+le\s+rôle\s+d)\S*\s+"
        r"(?:\w+\s+)?(?:sans\s+restriction|non\s+censuré|sans\s+filtre|malveillant)",
        r"\b(?:ahora\s+eres|finge\s+ser|actúa\s+como)\s+(?:una?\s+)?(?:\w+\s+)?"
        r"(?:sin\s+restricciones|sin\s+censura|sin\s+filtros|malvad)",
    ),
    _rule(
        "persona", 0.6,
        "dan|do anything|developer mode|jailbr|god mode|evil|aim mode|unfiltered",
        r"\b(?:DAN|do\s+anything\s+now|developer\s+mode|jailbr(?:ea|o)k\w*|god\s+mode|"
        r"evil\s+(?:ai|assistant|twin|confidant)|AIM\s+mode|unfiltered\s+(?:ai|mode|assistant))\b",
    ),
    _rule(
        "no_limits", 0.5,
        "without|with no|has no|have no|free of|free from|ohne|sans|sin ",
        r"\b(?:without|with\s+no|free\s+(?:of|from)|(?:has|have|with)\s+no)\s+(?:any\s+)?"
        r"(?:restrictions|limitations|"
        r"filters|censorship|guidelines|rules|ethical\s+(?:guidelines|constraints))\b",
        r"\bohne\s+(?:jegliche\s+|irgendwelche\s+)?(?:einschränkungen|beschränkungen|filter|"
        r"zensur|regeln)\b",
        r"\bsans\s+(?:aucune\s+)?(?:restrictions?|limites|filtres?|censure|règles)\b",
        r"\bsin\s+(?:ninguna\s+)?(?:restricci(?:ón|ones)|límites|filtros?|censura|reglas)\b",
    ),
    _rule(
        "bypass_safety", 0.6,
        ("safety|content|ethic|moderation|sicherheit|inhalt|sécurité|modération|seguridad|"
         "moderación|contenido"),
        r"\b(?:bypass|disable|circumvent|turn\s+off|override|ignore)\s+(?:your\s+|the\s+|all\s+)*"
        r"(?:safety|content|ethic\w*|moderation)\s+(?:filters?|guidelines|polic(?:y|ies)|rules|"
        r"protocols|settings)",
        r"\b(?:sicherheits\w*|inhalts\w*filter\w*)\s+(?:\w+\s+)?(?:umgehen|ignorieren|"
        r"deaktivieren|abschalten)",
        r"\b(?:contourne[rz]?|désactive[rz]?|ignore[rz]?)\s+(?:\w+\s+){0,2}(?:filtres?|règles|"
        r"protections?)\s+de\s+(?:sécurité|modération)",
        r"\b(?:omite|desactiva|evita|elude|ignora)\w*\s+(?:\w+\s+){0,2}(?:filtros?|reglas|"
        r"políticas|protecciones)\s+de\s+(?:seguridad|moderación|contenido)",
    ),
    _rule(
        "extraction", 1.0,
        "prompt|instructions|anweisungen|instruktionen|above|instrucciones|invite|consignes",
        r"\b(?:reveal|show|print|output|repeat|display|leak|dump|tell\s+me|give\s+me|recite|"
        r"spell\s+out|copy)\s+(?:me\s+)?(?:\w+\s+){0,2}(?:system\s+prompt|(?:initial|hidden|"
        r"secret|original|system|developer)\s+(?:instructions|prompt|message)|instructions\s+"
        r"(?:above|you\s+were\s+given))",
        r"\brepeat\s+(?:\w+\s+){0,3}(?:words|text|everything)\s+above\b",
        r"\b(?:zeig|gib|wiederhole|verrate|nenne)\w*\s+(?:\w+\s+){0,3}(?:system-?prompt|"
        r"(?:ursprünglichen|versteckten|geheimen|initialen)\s+(?:anweisungen|instruktionen))",
        r"\b(?:révèle|montre|affiche|répète|donne|dis)\S*\s+(?:\w+\s+){0,3}(?:prompt\s+système|"
        r"invite\s+système|instructions\s+(?:initiales|cachées|secrètes|système|d'origine))",
        r"\b(?:revela|muestra|imprime|repite|dime|dame)\w*\s+(?:\w+\s+){0,3}(?:prompt\s+del\s+"
        r"sistema|instrucciones\s+(?:iniciales|ocultas|secretas|del\s+sistema|originales))",
    ),
    _rule(
        "extraction_question", 0.5,
        "prompt|instructions|anweisungen|instrucciones",
        r"\bwhat\s+(?:is|are|was|were)\s+(?:your|the)\s+(?:exact\s+)?(?:system\s+prompt|"
        r"(?:initial|hidden|original)\s+instructions)",
        r"\bwie\s+lautet\s+(?:dein|der)\s+system-?prompt|\bwas\s+(?:sind|ist)\s+deine?\s+"
        r"(?:system-?prompt|anweisungen)",
        r"\bquel(?:le)?s?\s+(?:est|sont)\s+(?:ton|tes|le|les)\s+(?:prompt\s+système|"
        r"instructions)",
        r"\bcu[aá]l(?:es)?\s+(?:es|son)\s+(?:tu|tus|el|las)\s+(?:prompt\s+del\s+sistema|"
        r"instrucciones)",
    ),
    _rule(
        "encoded_instructions", 0.4,
        ("decod|decrypt|deobfuscate|dekodier|entschlüssl|décod|déchiffr|descifr|encoded"),
        r"\b(?:decode|decrypt|deobfuscate)\s+(?:this|the\s+following|it)\b.{0,40}\b(?:and|then)\s+"
        r"(?:follow|execute|run|obey|do)",
        r"\b(?:dekodiere|entschlüssle)\b.{0,40}\b(?:befolge|führe)",
        r"\b(?:décode|déchiffre)\b.{0,40}\b(?:suis|exécute|applique)",
        r"\b(?:decodifica|descifra)\b.{0,40}\b(?:sigue|ejecuta|obedece)",
        r"\b(?:rot13|base64|hex)[- ]encoded\s+(?:instructions|prompt|command)",
    ),
)  # fmt: skip

#: Base64 runs long enough to hold an instruction (at least 24 characters), with the
#: character before them (a character class first lets ``re`` skip ahead quickly).
_BASE64 = re.compile(r"[^A-Za-z0-9+/][A-Za-z0-9+/]{24,}={0,2}")
#: How far around a trigger word a rule's expression is tried.
_BEFORE, _AFTER = 160, 240


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    start: int
    end: int


def _build_triggers() -> ahocorasick.Automaton:
    automaton = ahocorasick.Automaton()
    owners: dict[str, list[int]] = {}
    for index, rule in enumerate(RULES):
        for trigger in rule.triggers:
            owners.setdefault(trigger, []).append(index)
    for trigger, indexes in owners.items():
        automaton.add_word(trigger, (len(trigger), tuple(indexes)))
    automaton.make_automaton()
    return automaton


_TRIGGERS: Final = _build_triggers()


def _rule_hits(text: str) -> list[Hit]:
    """The first match of each rule, tried only around its trigger words."""
    lowered = text.lower()
    if len(lowered) != len(text):  # lower case changed the length: try every rule everywhere
        found = ((rule, rule.pattern.search(text)) for rule in RULES)
        return [Hit(rule.id, m.start(), m.end()) for rule, m in found if m is not None]
    near: dict[int, list[int]] = {}
    for last, (length, indexes) in _TRIGGERS.iter(lowered):
        for index in indexes:
            near.setdefault(index, []).append(last - length + 1)
    hits = []
    for index in sorted(near):
        rule = RULES[index]
        searched_to = 0
        for position in near[index]:
            start = max(searched_to, position - _BEFORE)
            end = position + _AFTER
            if start >= end:
                continue
            found = rule.pattern.search(text, start, end)
            searched_to = end
            if found is not None:
                hits.append(Hit(rule.id, found.start(), found.end()))
                break
    return hits


def matches(text: str) -> list[Hit]:
    """The first match of each rule in ``text``, and ``encoded_payload`` for a decoded base64
    run that matches a rule."""
    hits = _rule_hits(text)
    for run in _BASE64.finditer(" " + text):
        decoded = _decoded(run.group()[1:])
        if decoded and _rule_hits(decoded):
            hits.append(Hit("encoded_payload", run.start(), run.end() - 1))
            break
    return hits


def _decoded(value: str) -> str | None:
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None


WEIGHTS: Final = {rule.id: rule.weight for rule in RULES} | {"encoded_payload": 1.0}


def score(hits: list[Hit]) -> float:
    return sum(WEIGHTS[h.rule] for h in hits)
