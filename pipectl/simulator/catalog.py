"""What the simulated APES writes: its rule catalogue, prompts, clients and vocabularies.

The prompts are fictional but shaped like real prompt-improvement traffic. Each one carries a
made-up marker word (listed in `PROMPT_MARKERS`) that occurs nowhere else, so a privacy test
can search pipectl's own schema for prompt text and be sure that a hit is a leak.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RuleSpec:
    """One rule of the catalogue and how it behaves when applied."""

    rule_id: str
    rule_name: str
    category: str
    description: str
    default_parameters: dict[str, Any]
    priority: int
    mean_score: float  # typical improvement_score of one application
    mean_ms: float  # typical execution_time_ms
    areas: tuple[str, ...] = ()  # improvement areas users credit it with
    addition: str = ""  # what it adds to a prompt


# The first four are the upstream seed rows of sql/apes/schema.sql, unchanged.
RULES: tuple[RuleSpec, ...] = (
    RuleSpec(
        "clarity_rule",
        "Clarity Enhancement Rule",
        "core",
        "Improves prompt clarity and reduces ambiguity",
        {"min_improvement_threshold": 0.1},
        100,
        0.72,
        85,
        ("clarity",),
        "State exactly what a good answer must contain.",
    ),
    RuleSpec(
        "specificity_rule",
        "Specificity Enhancement Rule",
        "core",
        "Makes prompts more specific and actionable",
        {"context_expansion": True},
        90,
        0.68,
        110,
        ("specificity",),
        "Name the concrete inputs, limits and the expected length.",
    ),
    RuleSpec(
        "structure_rule",
        "Structure Enhancement Rule",
        "formatting",
        "Improves prompt structure and organization",
        {"add_formatting": True},
        80,
        0.64,
        60,
        ("structure",),
        "Organise the request as: goal, context, constraints, output.",
    ),
    RuleSpec(
        "context_rule",
        "Context Enhancement Rule",
        "content",
        "Adds relevant context and background information",
        {"context_depth": "medium"},
        70,
        0.61,
        190,
        ("context",),
        "Background: the reader knows the domain but not this project.",
    ),
    RuleSpec(
        "chain_of_thought_rule",
        "Chain of Thought Rule",
        "reasoning",
        "Asks for step-by-step reasoning before the answer",
        {"explicit_steps": True, "max_steps": 8},
        75,
        0.66,
        140,
        ("reasoning",),
        "Think through the problem step by step before answering.",
    ),
    RuleSpec(
        "few_shot_examples_rule",
        "Few-Shot Example Rule",
        "examples",
        "Adds worked examples of the expected input and output",
        {"example_count": 2, "diverse": True},
        65,
        0.7,
        420,
        ("examples",),
        "Here are two examples of the expected output format.",
    ),
    RuleSpec(
        "role_based_prompting_rule",
        "Role-Based Prompting Rule",
        "persona",
        "Gives the model an expert role suited to the task",
        {"role_source": "domain"},
        60,
        0.57,
        70,
        ("context",),
        "You are a senior specialist in this field.",
    ),
    RuleSpec(
        "xml_structure_rule",
        "XML Structure Enhancement Rule",
        "formatting",
        "Wraps instructions, context and data in XML tags",
        {"tags": ["instructions", "context", "data"]},
        55,
        0.59,
        45,
        ("structure",),
        "Put the data inside <data> tags and the instructions inside <instructions>.",
    ),
    RuleSpec(
        "output_format_rule",
        "Output Format Specification Rule",
        "formatting",
        "Specifies the format, length and layout of the answer",
        {"formats": ["markdown", "json", "table"]},
        58,
        0.63,
        55,
        ("format",),
        "Answer in Markdown with a short summary first.",
    ),
    RuleSpec(
        "constraint_rule",
        "Constraint Specification Rule",
        "content",
        "Makes implicit constraints explicit (scope, tone, limits)",
        {"max_constraints": 5},
        52,
        0.6,
        95,
        ("specificity",),
        "Keep it under 300 words and do not invent facts.",
    ),
    RuleSpec(
        "ambiguity_resolution_rule",
        "Ambiguity Resolution Rule",
        "core",
        "Detects vague terms and replaces them with precise ones",
        {"vague_terms_threshold": 2},
        85,
        0.69,
        230,
        ("clarity",),
        "Where a term could mean several things, use the meaning given here.",
    ),
    RuleSpec(
        "audience_targeting_rule",
        "Audience Targeting Rule",
        "content",
        "States who the answer is for and their level",
        {"default_level": "intermediate"},
        45,
        0.55,
        65,
        ("context",),
        "The audience is a technical team lead.",
    ),
    RuleSpec(
        "conciseness_rule",
        "Conciseness Rule",
        "style",
        "Removes filler and redundant instructions",
        {"max_reduction": 0.3},
        40,
        0.52,
        50,
        ("clarity",),
        "Be concise.",
    ),
    RuleSpec(
        "tone_consistency_rule",
        "Tone Consistency Rule",
        "style",
        "Aligns the requested tone with the purpose of the text",
        {"tones": ["neutral", "friendly", "formal"]},
        35,
        0.5,
        75,
        ("tone",),
        "Use a neutral, professional tone.",
    ),
    RuleSpec(
        "task_decomposition_rule",
        "Task Decomposition Rule",
        "reasoning",
        "Splits compound requests into ordered sub-tasks",
        {"max_subtasks": 5},
        50,
        0.65,
        310,
        ("structure", "reasoning"),
        "Handle the parts in order: first analyse, then propose, then summarise.",
    ),
    RuleSpec(
        "linguistic_quality_rule",
        "Linguistic Quality Rule",
        "linguistic",
        "Fixes grammar, readability and terminology",
        {"readability_target": 60},
        30,
        0.48,
        480,
        ("clarity",),
        "",
    ),
)

RULES_BY_ID: dict[str, RuleSpec] = {rule.rule_id: rule for rule in RULES}


def rule_spec(rule_id: str, rule_name: str, category: str | None = None) -> RuleSpec:
    """The spec of a rule; rules found only in the database get a stable made-up profile."""
    known = RULES_BY_ID.get(rule_id)
    if known is not None:
        return known
    digest = hashlib.sha256(rule_id.encode()).digest()
    return RuleSpec(
        rule_id,
        rule_name,
        category or "custom",
        "",
        {},
        50,
        0.45 + digest[0] / 255 * 0.3,
        50 + digest[1] / 255 * 400,
        ("clarity",),
        "",
    )


@dataclass(frozen=True)
class SamplePrompt:
    """A prompt as a user sends it, with what the classifier would say about it."""

    text: str
    marker: str
    prompt_type: str
    category: str
    domain: str


SAMPLE_PROMPT_SPECS: tuple[SamplePrompt, ...] = (
    SamplePrompt(
        "Write a Python function that parses the Zorvantic export files and returns one dict "
        "per invoice line.",
        "Zorvantic",
        "code_generation",
        "technical",
        "software",
    ),
    SamplePrompt(
        "Explain why my Quillmarsh service leaks memory after a few hours under load.",
        "Quillmarsh",
        "debugging",
        "technical",
        "software",
    ),
    SamplePrompt(
        "Summarize the attached Brivelton quarterly report for the board in five bullet points.",
        "Brivelton",
        "summarization",
        "business",
        "finance",
    ),
    SamplePrompt(
        "Draft a friendly email telling the Kestrova team that the launch moves to next week.",
        "Kestrova",
        "writing",
        "business",
        "communication",
    ),
    SamplePrompt(
        "Write a short story about a lighthouse keeper on the island of Tamberlune.",
        "Tamberlune",
        "creative_writing",
        "creative",
        "fiction",
    ),
    SamplePrompt(
        "Compare PostgreSQL and MySQL for the Ostrevane analytics workload, write-heavy.",
        "Ostrevane",
        "analysis",
        "technical",
        "databases",
    ),
    SamplePrompt(
        "Refactor this Vellquist React component to use hooks instead of a class.",
        "Vellquist",
        "code_review",
        "technical",
        "software",
    ),
    SamplePrompt(
        "Create a lesson plan on photosynthesis for the Harrowmede grade 7 class.",
        "Harrowmede",
        "education",
        "academic",
        "teaching",
    ),
    SamplePrompt(
        "Translate the Pellucine onboarding guide into German, keeping product names.",
        "Pellucine",
        "translation",
        "business",
        "localization",
    ),
    SamplePrompt(
        "Extract every date, amount and counterparty from these Drossmoor contracts as JSON.",
        "Drossmoor",
        "data_extraction",
        "business",
        "legal",
    ),
    SamplePrompt(
        "Write SQL that finds the Cindravel customers who churned in the last 90 days.",
        "Cindravel",
        "code_generation",
        "technical",
        "databases",
    ),
    SamplePrompt(
        "What are the main risks of migrating the Fennimoor monolith to microservices?",
        "Fennimoor",
        "question_answering",
        "technical",
        "architecture",
    ),
    SamplePrompt(
        "Give me ten names for a coffee brand inspired by the Yarrowind valley.",
        "Yarrowind",
        "brainstorming",
        "creative",
        "marketing",
    ),
    SamplePrompt(
        "Review this Grelmont pull request for security problems and missing tests.",
        "Grelmont",
        "code_review",
        "technical",
        "security",
    ),
    SamplePrompt(
        "Write product copy for the Luminaq desk lamp aimed at students.",
        "Luminaq",
        "writing",
        "creative",
        "marketing",
    ),
    SamplePrompt(
        "Analyse the Sorbethal survey results and tell me which features users want most.",
        "Sorbethal",
        "analysis",
        "business",
        "research",
    ),
    SamplePrompt(
        "Help me prepare for a system design interview about the Pravokin ride-sharing app.",
        "Pravokin",
        "question_answering",
        "technical",
        "career",
    ),
    SamplePrompt(
        "Turn these Weskettle meeting notes into action items with owners and due dates.",
        "Weskettle",
        "summarization",
        "business",
        "productivity",
    ),
    SamplePrompt(
        "Write unit tests for the Morvidane payment retry logic with pytest.",
        "Morvidane",
        "code_generation",
        "technical",
        "software",
    ),
    SamplePrompt(
        "Explain quantum entanglement to a ten year old who loves the Thistlegate comics.",
        "Thistlegate",
        "education",
        "academic",
        "physics",
    ),
    SamplePrompt(
        "Suggest a two week itinerary through Norway ending at the Aldervast fjord hotel.",
        "Aldervast",
        "planning",
        "general",
        "travel",
    ),
    SamplePrompt(
        "Why does the Crennowick Kubernetes deployment restart every night at 2 am?",
        "Crennowick",
        "debugging",
        "technical",
        "infrastructure",
    ),
    SamplePrompt(
        "Write a cover letter for a data engineer position at Ilvarsen Logistics.",
        "Ilvarsen",
        "writing",
        "general",
        "career",
    ),
    SamplePrompt(
        "Classify these Quenmorrow support tickets by urgency and product area.",
        "Quenmorrow",
        "classification",
        "business",
        "support",
    ),
    SamplePrompt(
        "Design a PostgreSQL schema for the Ebbridge library loans system.",
        "Ebbridge",
        "code_generation",
        "technical",
        "databases",
    ),
    SamplePrompt(
        "Rewrite the Solvenna privacy policy in plain language for customers.",
        "Solvenna",
        "rewriting",
        "business",
        "legal",
    ),
    SamplePrompt(
        "Give feedback on the pacing of chapter three of my Marrowick fantasy novel.",
        "Marrowick",
        "creative_writing",
        "creative",
        "fiction",
    ),
    SamplePrompt(
        "Calculate the break-even point for the Twindlehurst bakery given these costs.",
        "Twindlehurst",
        "analysis",
        "business",
        "finance",
    ),
    SamplePrompt(
        "Write a bash script that rotates the Pemberlyx nginx logs and keeps 14 days.",
        "Pemberlyx",
        "code_generation",
        "technical",
        "infrastructure",
    ),
    SamplePrompt(
        "List the arguments for and against a four day week at Corvenhall Studios.",
        "Corvenhall",
        "analysis",
        "general",
        "workplace",
    ),
    SamplePrompt(
        "Explain the difference between a mutex and a semaphore using the Gildersnap queue.",
        "Gildersnap",
        "question_answering",
        "technical",
        "software",
    ),
    SamplePrompt(
        "Plan a social media campaign for the Wyndleford farmers market opening.",
        "Wyndleford",
        "planning",
        "creative",
        "marketing",
    ),
    SamplePrompt(
        "Summarize the key findings of the Ottergrave clinical trial for a general audience.",
        "Ottergrave",
        "summarization",
        "academic",
        "medicine",
    ),
    SamplePrompt(
        "Chat with me in Spanish about weekend plans; correct my mistakes like Ferrindale "
        "tutors do.",
        "Ferrindale",
        "conversation",
        "general",
        "language",
    ),
    SamplePrompt(
        "Convert this Jasperwold CSV of sensor readings into a tidy pandas DataFrame.",
        "Jasperwold",
        "data_extraction",
        "technical",
        "data",
    ),
    SamplePrompt(
        "Write a haiku sequence about autumn in the Blythemere woods.",
        "Blythemere",
        "creative_writing",
        "creative",
        "poetry",
    ),
)

SAMPLE_PROMPTS: tuple[str, ...] = tuple(p.text for p in SAMPLE_PROMPT_SPECS)
PROMPT_MARKERS: tuple[str, ...] = tuple(p.marker for p in SAMPLE_PROMPT_SPECS)

AGENT_TYPES: tuple[tuple[str, float], ...] = (
    ("claude-code", 0.42),
    ("cursor", 0.24),
    ("copilot", 0.14),
    ("windsurf", 0.08),
    ("cli", 0.08),
    ("api", 0.04),
)

CLIENTS: tuple[str, ...] = ("mcp", "cli", "web", "api")

USER_NOTES: tuple[str, ...] = (
    "Much clearer now.",
    "Good, but a bit long.",
    "Exactly what I needed.",
    "The examples helped a lot.",
    "Lost some of my original intent.",
    "Too formal for my use.",
    "Would like fewer added constraints.",
    "Great structure.",
    "Did not change much.",
    "Helpful for the team.",
)

PATTERN_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("short_prompt_boost", "Short prompts gain most from {a} followed by {b}"),
    ("code_context_pair", "{a} and {b} together outperform either alone on code prompts"),
    ("example_saturation", "{a} adds little once {b} has been applied"),
    ("reasoning_chain", "{a} raises scores when the prompt asks a multi-part question; {b} too"),
    ("format_first", "Applying {a} before {b} yields higher ratings"),
    ("domain_specialist", "{a} is most effective for specialist domains with {b}"),
)

DISCOVERY_METHODS: tuple[tuple[str, float], ...] = (
    ("ml_mining", 0.55),
    ("statistical_analysis", 0.35),
    ("manual", 0.10),
)

ML_MODELS: tuple[str, ...] = ("rule_selector_v3", "quality_scorer_v2", "intent_classifier_v5")
ANALYTICS_QUERIES: tuple[str, ...] = (
    "rule_effectiveness",
    "satisfaction_daily",
    "top_rules",
    "session_funnel",
    "prompt_types",
)
