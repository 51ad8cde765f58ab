"""Masking credentials out of every text that reaches the model, and files never to read.

`mask_secrets` is the one masking function: `cmc.diffs.process_diff` (staged diffs and training
diffs), `cmc.messages.clean_message` (history, file history and training messages) run every text
through it. Its rules follow the families of gitleaks' default configuration and detect-secrets'
plugins: tokens with a known shape (cloud, VCS, payment, chat, package registries, …), private key
blocks, credentials in URLs, ``Authorization`` headers and ``curl -u``, ``name = value`` where the
name says secret, connection-string fields, and high-entropy base64 strings in quotes or YAML
values. Look-alikes stay: commit hashes, UUIDs, versions and checksums are hex or plain; long
base64 blobs (images, fixtures) are data. `tests/test_secrets.py` measures recall and false
positives on its own corpus; the README has the figures.

`CREDENTIAL_FILES`: paths whose content is never read (their diff is not even requested from git),
only their names reach the model.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter

MASK = "[secret]"

# Files that hold credentials by their nature: their content is never read.
CREDENTIAL_FILES = (
    ".env", ".env.*", "*.env", ".envrc", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.ppk", "*.kdbx",
    "credentials.json", "credentials", "client_secret*.json", "service-account*.json",
    ".netrc", "_netrc", ".pgpass", ".git-credentials", ".htpasswd", ".npmrc", ".pypirc",
    ".dockercfg", "terraform.tfstate", "terraform.tfstate.backup", "*.tfvars", "secrets.yml",
    "secrets.yaml", ".secrets", "kubeconfig",
)  # fmt: skip
# …but these are templates meant to be committed and read.
CREDENTIAL_FILE_EXCEPTIONS = (".env.example", ".env.sample", ".env.template", ".env.dist")

_B64 = r"[A-Za-z0-9+/]"
# (hints, pattern): a pattern runs only on text holding one of its literal hints (a C-speed `in`
# test), so forty shapes cost about one scan; None: always.
_KNOWN_SHAPES: list[tuple[tuple[str, ...] | None, str]] = [
    (
        (
            "AKIA",
            "ASIA",
            "ABIA",
            "ACCA",
            "AGPA",
            "AIDA",
            "AROA",
            "AIPA",
            "ANPA",
            "ANVA",
            "APKA",
            "A3T",
        ),
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|A3T[A-Z0-9])[0-9A-Z]{16}\b",
    ),  # AWS key id
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub
    (("github_pat_",), r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"),
    (
        (
            "glpat-",
            "gldt-",
            "glrt-",
            "glptt-",
            "glft-",
            "glcbt-",
            "gloas-",
            "glimt-",
            "glagent-",
            "glsoat-",
        ),
        r"\bgl(?:pat|dt|rt|ptt|ft|cbt|oas|imt|agent|soat)-[A-Za-z0-9_-]{20,}\b",
    ),  # GitLab
    (("xox",), r"\bxox[abposre]-[A-Za-z0-9-]{10,}\b"),  # Slack tokens
    (
        ("hooks.slack.com",),
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}",
    ),
    (("sk_",), r"sk_(?:live|test|prod)_[0-9A-Za-z]{10,}\b"),  # Stripe secret
    (("rk_",), r"rk_(?:live|test|prod)_[0-9A-Za-z]{10,}\b"),  # Stripe restricted
    (
        ("sk-",),
        r"\bsk-(?:proj-|ant-(?:api|admin)\d\d-|live-|test-|svcacct-)?[A-Za-z0-9_-]{20,}\b",
    ),  # OpenAI, Anthropic
    (("AIza",), r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API key
    (("ya29.",), r"\bya29\.[0-9A-Za-z_-]{20,}"),  # Google OAuth access token
    (("eyJ",), r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_=-]{10,}(?:\.[A-Za-z0-9_=+/-]*)?"),  # JWT
    (("npm_",), r"\bnpm_[A-Za-z0-9]{36}\b"),  # npm
    (("pypi-AgE",), r"\bpypi-AgE[A-Za-z0-9_-]{50,}"),  # PyPI
    (("hf_",), r"\bhf_[A-Za-z]{34}\b"),  # Hugging Face
    (("SG.",), r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b"),  # SendGrid
    (("SK",), r"SK[0-9a-z]{32}\b"),  # Twilio API key (a leading \b would stop the literal search)
    (("AC",), r"AC[0-9a-z]{32}\b"),  # Twilio account id
    (("-us",), r"\b[0-9a-f]{32}-us\d{1,2}\b"),  # Mailchimp
    (("GR1348941",), r"\bGR1348941[\w-]{20,}"),  # GitLab runner registration
    (("AKC",), r"AKC[a-zA-Z0-9]{10,}\b"),  # Artifactory
    (("AP",), r"AP[\dA-F][a-zA-Z0-9]{8,}\b"),
    (
        ("softlayer",),
        r"(?<=api\.softlayer\.com/soap/v3/)[a-z0-9]{64}|(?<=api\.softlayer\.com/soap/v3\.1/)[a-z0-9]{64}",
    ),
    (
        ("hvs.", "hvb.", "hvr."),
        r"\bhv[sbr]\.[A-Za-z0-9_-]{24,}",
    ),  # Vault service/batch/recovery tokens
    ((":AA",), r"\b\d{8,10}:AA[A-Za-z0-9_-]{33}\b"),  # Telegram bot
    (
        ("discord",),
        r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]{40,}",
    ),
    (("key-",), r"\bkey-[0-9a-z]{32}\b"),  # Mailgun
    (("AGE-SECRET-KEY-",), r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b"),  # age
    (
        ("shpat_", "shpca_", "shppa_", "shpss_"),
        r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",
    ),  # Shopify
    (("_v1_",), r"\bdo[por]_v1_[a-f0-9]{64}\b"),  # DigitalOcean
    (("dp.",), r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,}"),  # Doppler
    (("lin_",), r"\blin_(?:api|oauth)_[A-Za-z0-9]{40}\b"),  # Linear
    (("dapi",), r"\bdapi[a-f0-9]{32}(?:-\d)?\b"),  # Databricks
    (("sq0",), r"\bsq0(?:atp|csp)-[0-9A-Za-z_-]{22,}"),  # Square
    (("PMAK-",), r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b"),  # Postman
    (("glsa_",), r"\bglsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b"),  # Grafana service account
    (("glc_",), r"\bglc_[A-Za-z0-9+/]{32,}={0,2}"),  # Grafana cloud
    (("NRAK-",), r"\bNRAK-[A-Z0-9]{27}\b"),  # New Relic
    (("ATATT3",), r"\bATATT3[A-Za-z0-9_=-]{50,}"),  # Atlassian
    (("sntrys_",), r"\bsntrys_[A-Za-z0-9+/=_-]{40,}"),  # Sentry
    (("dckr_pat_",), r"\bdckr_pat_[A-Za-z0-9_-]{27,}"),  # Docker Hub
    (("pscale_",), r"\bpscale_(?:tkn|pw|oauth)_[A-Za-z0-9_.-]{32,}"),  # PlanetScale
    (("rubygems_",), r"\brubygems_[a-f0-9]{48}\b"),  # RubyGems
    (("FlWPK",), r"\bFlWPK(?:_TEST)?-[a-h0-9]{32}-X\b"),  # Flutterwave
    (("EAA",), r"\bEAA[A-Za-z0-9]{100,}"),  # Facebook access token
    (("r8_", "rnd_"), r"\b(?:r8|rnd)_[A-Za-z0-9]{30,}\b"),  # Replicate, Render
    (("secret-",), r"\bsecret-[A-Za-z0-9]{32,}\b"),
    (
        ("$",),
        r"\$(?:apr1|2[abxy]|5|6|argon2id?)\$[^\s\"':]{20,}",
    ),  # password hashes (htpasswd, shadow)
]
_KNOWN = [(hints, re.compile(p)) for hints, p in _KNOWN_SHAPES]
_ALL_HINTS = frozenset(h for hints, _ in _KNOWN_SHAPES for h in hints or ())
# A bot token in three dot-separated base64url parts (Discord's shape, and other services'): found
# by its short middle part, which is rare, then checked whole (a scan for the whole shape at every
# position cost a fifth of all the masking).
_DOTTED_MIDDLE = re.compile(r"(?<=[A-Za-z\d_-])\.[A-Za-z\d_-]{6,7}\.(?=[A-Za-z\d_-]{27})")
_DOTTED = re.compile(r"[A-Za-z\d_-]{23,28}\.[A-Za-z\d_-]{6,7}\.[A-Za-z\d_-]{27,40}")


def _mask_dotted_tokens(text: str) -> str:
    spans = []
    for m in _DOTTED_MIDDLE.finditer(text):
        start, end = m.start(), m.end()
        while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_-"):
            start -= 1
        while end < len(text) and (text[end].isalnum() or text[end] in "_-"):
            end += 1
        token = text[start:end]
        joined = token.replace(".", "")
        if _DOTTED.fullmatch(token) and shannon_entropy(joined) >= 4.5 and _random_looking(joined):
            spans.append((start, end))
    for start, end in reversed(spans):
        text = text[:start] + MASK + text[end:]
    return text


# name = "value" / name: value, for names that say the value is a secret.
_KEYWORDS = (
    r"password|passwd|passphrase|pass(?![\w.-])|pwd|(?<![a-z])pw(?![a-z])|secret|token|api[_-]?key|"
    r"apikey|access[_-]?key|softlayer[\w-]*key|(?<![a-z])sl[_-]key|ibm[\w-]*key|"
    r"cloudant[\w-]*(?:key|pw)|"
    r"private[_-]?key|client[_-]?secret|auth[_-]?key|key[_-]?data|signing[_-]?key|"
    r"encryption[_-]?key|master[_-]?key|session[_-]?key|webhook[_-]?url|dsn"
)
# Secrets that are a field of something: only the value is masked (named group "s").
_FIELD_RULES = [
    # scheme://user:password@host, the user perhaps empty (redis://:PASSWORD@host)
    r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@'\"]*:(?P<u>[^\s@/'\"]{3,})@[^\s'\"]",
    # Authorization: Bearer TOKEN / Basic B64 / Token ..., also in header dicts
    r"(?i:\b(?:authorization|proxy-authorization)\b[\"']?[ \t]*[:=][ \t]*[\"']?(?:bearer|basic|token|digest|bot)[ \t]+)(?P<s>[A-Za-z0-9._~+/=-]{8,})",
    r"(?i:\bbearer[ \t]+)(?P<s>[A-Za-z0-9._~+/-]{20,}=*)",
    # curl -u user:pw / --user user:pw
    r"\bcurl\b.*?(?:[ \t]-u[ \t]*|--user[ =])[\"']?[^\s:\"']+:(?P<s>[^\s\"']{3,})",
    # connection strings: Password=…; AccountKey=…; SharedAccessKey=…; sig=… (Azure SAS)
    r"(?i:\b(?:password|pwd|accountkey|sharedaccesskey|sharedsecret|clientsecret)=)(?P<s>[^;\s\"']{4,})",
    r"(?i:[?&]sig=)(?P<s>[A-Za-z0-9%+/=]{20,})",
    # shells that set without "=": fish `set -x NAME value`, csh `setenv NAME value`
    rf"(?i:\b(?:set[ \t]+-[gxU]+|setenv)[ \t]+\w*(?:{_KEYWORDS})\w*[ \t]+)(?P<s>\S{{6,}})",
    # XML: <password>SECRET</password>
    rf"<(?i:[\w:.-]*(?:{_KEYWORDS})[\w.-]*)>(?P<s>[^<\s]{{4,}})</",
    # .netrc: machine host login user password SECRET
    r"\b(?:login|machine)[ \t]+\S+[ \t]+password[ \t]+(?P<s>\S{3,})",
]
# Literal hints of each field rule (in the lower-cased text): a rule runs only where one appears.
_FIELD_HINTS = [("://",), ("authorization",), ("bearer",), ("curl",),
                ("password=", "pwd=", "accountkey=", "sharedaccesskey=", "sharedsecret=", "clientsecret="),
                ("sig=",), ("set ", "setenv"), ("</",), ("password",)]  # fmt: skip
_FIELDS = [(h, re.compile(p)) for h, p in zip(_FIELD_HINTS, _FIELD_RULES, strict=True)]

_KEYWORD_HINTS = ("pass", "pw", "secret", "token", "key", "credential", "dsn", "webhook")
# Words whose line may hold `name = value` for a name of `_KEYWORDS` (narrower than `_KEYWORD_HINTS`,
# which gates the pass as a whole: "key" alone is in most lines of code).
_HINTED_LINE = re.compile(
    r"pass|pwd|pw|secret|token|api|access|private|auth|key.?data|signing|encryption|master|"
    r"session|webhook|dsn|credential|softlayer|ibm|cloudant|sl.key"
)
# name = value, name: value, name := value, name == "value" (a comparison), name "value", a flag
# `--name value`, name("value") (a constructor or assignment call), name[] = @"value".
_ASSIGN = re.compile(
    rf"""(?P<key>(?<![\w.-])[\w.-]*(?i:{_KEYWORDS})[\w.-]*(?:\[\w*\])?["'\]]{{0,2}})"""
    r"""(?P<op>[ \t]*(?::=|=>|[!=]==?|=|:(?!:))[ \t]*@?|[ \t]+|(?:\.assign)?\([ \t]*(?=["']))"""
    r"""(?P<value>"[^"\n]{3,}"|'[^'\n]{3,}'|`[^`\n]{3,}`|[^\s'"`]{6,})""",
)
# "value" == password: a comparison written the other way round
_REVERSED = re.compile(
    rf"""(?P<value>"[^"\n]{{6,}}"|'[^'\n]{{6,}}')(?P<op>[ \t]*[!=]==?[ \t]*)"""
    rf"""(?P<key>[\w.]*(?i:{_KEYWORDS})[\w.]*)"""
)
# Names of functions that take a secret's name, not its value: getSecret("db"), loadToken("x").
_ACCESSOR = re.compile(
    r"(?i)(?:^|[._])(?:get|set|read|load|fetch|find|has|is|check|validate|verify|create|make|"
    r"generate|new|parse|encode|decode|hash|lookup|resolve|delete|remove|rotate)"
)
# values that only look assigned: code, placeholders, references
_NOT_A_VALUE = re.compile(
    r"""^["'`]?(?:[$@&(\[{:%#].*|[\w.$:!?<>\\]+\s*\(.*|[~^<>=v]*\d+(?:\.\d+)+\S*|\w+:|\{\{.*\}\}|<[^>]*>?|\*+|x{3,}|\.\.\.|changeme|example|[A-Za-z]+(?:-[A-Za-z]+)+|[\w-]*[_-]here|"""
    r"""dummy|placeholder|your[_-][\w-]+|none|null|nil|true|false|undefined|""|''|os\.environ.*|"""
    r"""env\[.*|process\.env.*|getenv.*|self\.\w+|this\.\w+|[\w.]+\(.*|\w+\.\w+(?:\.\w+)*|[\w.]+\[.*|"""
    r"""[a-z_]+|(?-i:[a-z]+(?:[A-Z][a-z]+)+))["'`]?,?$""",  # camelCase case-sensitively: under
    # IGNORECASE its two loops match the same letters, and a long word backtracked for 30 s
    re.IGNORECASE,
)
# Key names about a secret rather than holding one (its id, label, length, where it lives, …).
_PUBLIC = re.compile(
    r"public|_?id\b|Id\b|name|url|uri|endpoint|path|file|dir\b|type|kind|mode|len|size|count|"
    r"limit|timeout|expir|label|title|text|message|placeholder|description|prefix|suffix|format|"
    r"too[_-]?(?:short|long|weak)|invalid|mismatch|required|hint|strength|"
    r"pattern|regex|header|field|param|column|table|command|cmd|hash|policy|rotation|stream|"
    r"tokens?[\"']?\s*:\s*[\"']?\^",
    re.I,
)
_CHECKSUM_KEY = re.compile(
    r"(?:hash|checksum|digest|integrity|sha\d*|etag|_id|Id|nonce|salt)\W*$", re.I
)
_QUOTED = re.compile(r"""(["'`])(?P<s>[A-Za-z0-9+/_=-]{32,120})\1""")
_YAML_VALUE = re.compile(r"^[+ -]?[ \t]*[-\w.]+:[ \t]+(?P<s>[A-Za-z0-9+/]{16,}={0,2})[ \t]*$", re.M)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_PUTTY_BEGIN = re.compile(r"^PuTTY-User-Key-File-\d+:")
_PUTTY_END = re.compile(r"^Private-MAC:")


def is_credential_file(path: str | None) -> bool:
    """Whether ``path`` names a file that holds credentials (its content is never read)."""
    import fnmatch

    if not path:
        return False
    name = path.rsplit("/", 1)[-1]
    if name in CREDENTIAL_FILE_EXCEPTIONS:
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in CREDENTIAL_FILES) or path.endswith(
        ".kube/config"
    )


def shannon_entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _decodes_to_key(value: str) -> bool:
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=False)
    except (binascii.Error, ValueError):
        return False
    return raw.startswith(b"-----BEGIN") and b"PRIVATE KEY" in raw[:80]


def _encoded_secret(value: str) -> bool:
    """Base64 of a password-like string (Kubernetes secrets' data): printable, no spaces, mixed."""
    if len(value) < 16 or len(value) % 4:
        return False
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) < 8 or not all(33 <= b < 127 for b in raw):
        return False
    text = raw.decode()
    return sum(bool(re.search(p, text)) for p in ("[a-z]", "[A-Z]", "[0-9]", r"[^\w]")) >= 2


def _high_entropy(value: str) -> bool:
    """A random-looking base64 string (detect-secrets' limit 4.5 bits), not a word, hex or UUID."""
    if _decodes_to_key(value) or _encoded_secret(value):
        return True
    if len(value) > 120 or re.fullmatch(r"[0-9a-fA-F-]+", value) or re.match(r"sha\d+-", value):
        return False  # long blobs are data; hex and SRI strings are hashes, ids and checksums
    classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return classes == 3 and shannon_entropy(value) >= 4.5


def _mask_field(m: re.Match) -> str:
    named = m.groupdict()
    value = named.get("s") or named.get("u")
    placeholder = _NOT_A_VALUE.match(value) and not (named.get("u") and len(value) >= 12)
    if MASK in value or placeholder:  # (a long password in a URL is one, whatever it looks like)
        return m.group(0)
    return m.group(0).replace(value, MASK)


def _whole_word(m: re.Match) -> str:
    """A token shape found without a leading ``\b`` (so the engine looks for its literal start):
    masked only where it starts a word."""
    start = m.start()
    if start and (m.string[start - 1].isalnum() or m.string[start - 1] == "_"):
        return m.group(0)
    return MASK


def _lowered(text: str) -> str:
    """``text`` lower-cased, each character in its place (one whose lower case is longer, such as
    "İ", is kept as it is), so a position found in it is the same in ``text``."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _mask_text(line: str) -> str:
    """Every rule but the key blocks, over the whole text at once (the regex engine scans it in C)."""
    present = {h for h in _ALL_HINTS if h in line}  # each hint looked for once, not per rule
    for hints, rule in _KNOWN:
        if hints is None or not present.isdisjoint(hints):
            line = rule.sub(MASK if rule.pattern.startswith("\\b") else _whole_word, line)
    low = line.lower()
    for hints, rule in _FIELDS:
        if any(h in low for h in hints):
            line = rule.sub(_mask_field, line)

    def assign(m: re.Match) -> str:
        value, key, op = m.group("value"), m.group("key"), m.group("op")
        tail = ""
        if value[0] not in "\"'`":  # unquoted: what ends a statement or a list is not the value
            core = value.rstrip(",;)]}")
            core = core if core.count("{") >= core.count("}") else value.rstrip(",;)]")
            tail, value = value[len(core) :], core
            if len(value) < 6 or len(value) > 200 or re.fullmatch(r"[\w:]+!", value):
                return m.group(0)  # too short; minified code; a macro (quote_spanned!)
        if "[secret" in m.group(0) or _NOT_A_VALUE.match(value) or _PUBLIC.search(key):
            return m.group(0)
        quoted = value[0] in "\"'`"
        if not op.strip():  # `password "x";` or a flag `--api-key X`; not `password reset`
            flag = key.startswith("-") and (
                quoted or _random_looking(value) or re.fullmatch(r"[0-9a-f]{32,}", value)
            )
            named = value[0] == '"' and re.search(rf"(?i:{_KEYWORDS})\W*$", key)
            if not (flag or named):
                return m.group(0)
        if "(" in op and _ACCESSOR.search(key):
            return m.group(0)  # getSecret("db"): a name, not the secret
        quote = value[0] if quoted else ""
        rebuilt = key + op + quote + MASK + quote + tail
        return rebuilt if m.re is _ASSIGN else quote + MASK + quote + op + key

    if any(k in low for k in _KEYWORD_HINTS):  # only lines naming a secret go through this rule
        spans = []
        for found in _HINTED_LINE.finditer(_lowered(line)):  # (line changed since `low`)
            if not spans or found.start() > spans[-1][1]:
                start = line.rfind("\n", 0, found.start()) + 1
                end = line.find("\n", found.end())
                spans.append((start, len(line) if end < 0 else end))
        for start, end in reversed(spans):
            part = line[start:end]
            line = line[:start] + _REVERSED.sub(assign, _ASSIGN.sub(assign, part)) + line[end:]

    def entropic(m: re.Match) -> str:
        value = m.group("s")
        if _CHECKSUM_KEY.search(m.string[max(0, m.start() - 40) : m.start()]):
            return m.group(0)  # a hash or an id, named as such
        return m.group(0).replace(value, MASK) if _high_entropy(value) else m.group(0)

    line = _QUOTED.sub(entropic, line)
    return _YAML_VALUE.sub(entropic, line)


_TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/=_.~-]{16,}")


def leaks(text: str) -> bool:
    """Whether a text about to reach a user may hold a secret: the output's own guard, independent
    of the input's masking (which should have kept every secret from the model): anything
    `mask_secrets` would mask, or a random-looking string of 16+ characters (all three character
    classes at 3.9+ bits of entropy, as `_random_looking` judges keys against identifiers)."""
    if MASK in text or mask_secrets(text) != text:
        return True
    return any(_key_like(m.group(0)) for m in _TOKEN_LIKE.finditer(text))


def _key_like(token: str) -> bool:
    """A token that reads as a key, not as a name: random-looking, and its lowercase runs short
    (``Xy7Kp2Lq9Rt4``'s are one letter; ``SomeLongIdentifierName2``'s are words)."""
    if not (_random_looking(token) or _high_entropy(token)):
        return False
    runs = re.findall(r"[a-z]+", token)
    return not runs or sum(map(len, runs)) / len(runs) < 3


def mask_secrets(text: str) -> str:
    """``text`` with whatever looks like a credential replaced by ``[secret]``.

    Works on diffs (a leading ``+``/``-``/space marker is kept) and on plain text alike; a private
    key block becomes one masked line.
    """
    if not text:
        return text
    if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
        text = _mask_key_blocks(text)
    return _mask_named_values(_mask_structures(_mask_text(text)))


# --- where the structure names the secret: cheap hints first --------------------------------------

_MARK = r"[+ -]?"  # a diff line's marker, or none
_BLOCK_SCALAR = re.compile(
    rf"(?i)^(?P<ind>[ \t]*)[\w.-]*(?:{_KEYWORDS})[\w.-]*[\"']?:[ \t]*[|>][+-]?\d?[ \t]*$"
)
_XML_PAIR = re.compile(
    rf"""(?i)<[\w:.-]+\b[^<>]*?\b(?:key|name|id|type)[ \t]*=[ \t]*["'][^"']*(?:{_KEYWORDS})[^"']*["']"""
    r"""[^<>]*?\bvalue[ \t]*=[ \t]*(?P<q>["'])(?P<s>[^"'\n]{3,})(?P=q)"""
)
_XML_PAIR_BEFORE = re.compile(
    rf"""(?i)<[\w:.-]+\b[^<>]*?\bvalue[ \t]*=[ \t]*(?P<q>["'])(?P<s>[^"'\n]{{3,}})(?P=q)"""
    rf"""[^<>]*?\b(?:key|name|id|type)[ \t]*=[ \t]*["'][^"']*(?:{_KEYWORDS})[^"']*["']"""
)
_HEX_CALL = re.compile(
    r"""(?i)(?:fromhex|unhexlify|hex2bin|hexdecode|decode_hex|from_hex|hex\.decode(?:string)?)"""
    r"""[ \t]*\([ \t]*[bru]?(?P<q>["'])(?P<s>[0-9a-f]{32,})(?P=q)"""
    r"""|Buffer\.from\([ \t]*(?P<q2>["'])(?P<s2>[0-9a-fA-F]{32,})(?P=q2)[ \t]*,[ \t]*["']hex"""
)
_CALL_ARG = re.compile(  # (from the call's parenthesis: scanning from every word cost 10x)
    r"""(?<=[\w.])\((?:[^()\n]*?,)?[ \t]*(?:\w+[ \t]*=[ \t]*)?(?P<q>["'])(?P<s>[A-Za-z0-9+/_=-]{20,120})(?P=q)"""
)
_PROSE_PASSWORD = re.compile(
    r"(?i:\b(?:password|passwd|passcode|pwd)\b)(?:[ \t]+(?i:is|was|of|to|for[ \t]+\S+[ \t]+is))?"
    r"[ \t]*[:=]?[ \t]+(?P<s>[^\s,;]{3,})"
)
_SEPARATORS = (",", ";", "\t")
_KEYWORD = re.compile(r"pass|secret|token|pwd|api_?key")  # searched in lower-cased text: 10x sooner


def _keyword_lines(text: str):
    """The lines of ``text`` holding a word that names a secret (found by the word, not by
    matching every line)."""
    end = -1
    for m in _KEYWORD.finditer(_lowered(text)):
        if m.start() <= end:
            continue
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        yield text[start:end]


_HEADER_CELL = re.compile(r"""[\w ."'-]{1,40}""")


def _csv_header(line: str) -> tuple[str, list[int], int] | None:
    """(separator, the columns that name a secret, cells) of a separated header line, or None
    when it is not one."""
    body = line[1:] if line[:1] in "+- " else line
    for sep in _SEPARATORS:
        cells = body.split(sep)
        if len(cells) >= 2 and all(_HEADER_CELL.fullmatch(c.strip() or "x") for c in cells):
            cols = [j for j, c in enumerate(cells) if re.search(rf"(?i:{_KEYWORDS})", c)]
            if cols:
                return sep, cols, len(cells)
    return None


def _random_looking(value: str) -> bool:
    """A string of all three character classes whose letters are not words (no lowercase run of
    four or more letters follows another): keys, not identifiers."""
    if len(re.findall(r"[a-z]{5,}", value)) >= 2 or re.fullmatch(r"[0-9a-fA-F-]+", value):
        return False
    classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return classes == 3 and shannon_entropy(value) >= 3.9


def _password_like(word: str) -> bool:
    """Whether a word after "password" in prose is one: a digit or symbol in it, or capitals
    beyond the first letter."""
    core = word.rstrip(".!?)\"'`")
    if len(core) < 4 or core.startswith(("-", "$", "<", "{", "(", "[", "`")):
        return False
    if re.search(r"[\d\W_]", core):
        return True
    return not (core.isupper() or core.istitle() or core.islower())  # mixed: xQ9rT


def _mask_csv(text: str) -> str:
    """Values under a header cell that names a secret (a spreadsheet export), in the lines after
    it that have as many cells."""
    lines = text.split("\n")
    column: tuple[str, list[int], int] | None = None  # separator, secret columns, cells
    for i, line in enumerate(lines):
        marker = line[:1] if line[:1] in "+- " else ""
        body = line[len(marker) :]
        if column is not None:
            sep, cols, width = column
            cells = body.split(sep)
            if len(cells) != width:
                column = None
            else:
                for c in cols:
                    if cells[c].strip().strip("\"'") and MASK not in cells[c]:
                        cells[c] = MASK
                lines[i] = marker + sep.join(cells)
                continue
        if _KEYWORD.search(body.lower()):
            column = _csv_header(body)
    return "\n".join(lines)


_BLOCK_INDICATOR = re.compile(r"(?m):[ \t]*[|>][+-]?\d?[ \t]*$")


def _mask_block_scalars(text: str) -> str:
    """A YAML block scalar under a name that says secret (``password: |`` and the value on the
    lines below, indented deeper than the name)."""
    for m in _BLOCK_INDICATOR.finditer(text):  # the indicators first: a scan for the whole
        start = text.rfind("\n", 0, m.start()) + 1  # header at every line start cost 7 ms
        line = text[start : m.end()]
        if _BLOCK_SCALAR.match(line[1:] if line[:1] in "+- " else line):
            return text[:start] + _mask_block_scalar_lines(text[start:])
    return text


def _mask_block_scalar_lines(text: str) -> str:
    lines = text.split("\n")
    depth: int | None = None
    for i, line in enumerate(lines):
        marker = line[:1] if line[:1] in "+- " and len(line) > 1 else ""
        body = line[len(marker) :]
        indent = len(body) - len(body.lstrip(" \t"))
        if depth is not None:
            if body.strip() and indent > depth:
                lines[i] = marker + body[:indent] + MASK
                continue
            if body.strip():
                depth = None
        found = _BLOCK_SCALAR.match(body)
        if found:
            depth = len(found.group("ind"))
    return "\n".join(lines)


def _mask_structures(text: str) -> str:
    low = text.lower()
    if ": |" in text or ": >" in text or ":|" in text:
        text = _mask_block_scalars(text)
    if "value" in low and "<" in text:
        for rule in (_XML_PAIR, _XML_PAIR_BEFORE):
            text = rule.sub(lambda m: m.group(0).replace(m.group("s"), MASK), text)
    if "hex" in low:

        def hexed(m: re.Match) -> str:
            value = m.group("s") or m.group("s2")
            return m.group(0).replace(value, MASK)

        text = _HEX_CALL.sub(hexed, text)
    if "(" in text:

        def positional(m: re.Match) -> str:
            value = m.group("s")
            if _random_looking(value) and not _CHECKSUM_KEY.search(
                m.string[max(0, m.start() - 40) : m.start()]
            ):
                return m.group(0).replace(value, MASK)
            return m.group(0)

        text = _CALL_ARG.sub(positional, text)
    if any(k in low for k in ("password", "passwd", "passcode", "pwd")):

        def prose(m: re.Match) -> str:
            value = m.group("s")
            if MASK in value or not _password_like(value) or _NOT_A_VALUE.match(value):
                return m.group(0)
            return m.group(0).replace(value, MASK)

        text = _PROSE_PASSWORD.sub(prose, text)
    if any(_csv_header(line) for line in _keyword_lines(text)):
        text = _mask_csv(text)  # line by line, only where a header names a secret
    return _mask_dotted_tokens(text) if "." in text else text


def _mask_key_blocks(text: str) -> str:
    out: list[str] = []
    in_block: re.Pattern | None = None
    for line in text.split("\n"):
        marker = line[:1] if line[:1] in ("+", "-", " ") else ""
        if in_block is not None:
            if in_block.search(line):
                in_block = None
            continue
        begin = _PEM_BEGIN.search(line)
        if begin:
            in_block = None if _PEM_END.search(line, begin.end()) else _PEM_END
            out.append(line[: begin.start()] + MASK)
            continue
        if _PUTTY_BEGIN.search(line[len(marker) :]):
            in_block = _PUTTY_END
            out.append(marker + MASK)
            continue
        out.append(line)
    return "\n".join(out)


# --- by principle: any value a secret's name stands beside ------------------------------------------
# The rules above know formats; this pass knows names. A secret is named (in any of many languages,
# or by a suffix: REDIS_AUTH, DEPLOY_PAT, erlangCookie), and its value stands where a value goes:
# after `=`/`:` (quoted or not, any length), after a tool's flag, in a header, as a call's argument,
# under a Terraform variable of that name, or in prose. Every such literal is masked unless it reads
# as a reference, a placeholder, code or prose (`_value_like`).

_NAME = re.compile(
    r"pass(?:word|wd|phrase|code|wort)?(?![a-z])|pwd|secret|token(?!iz|is)|api[_-]?key|apikey|"
    r"credential|(?<![a-z])auth(?![a-z])|cookie|private[_-]?key|(?<![a-z])pat(?![a-z])|"
    r"senha|wachtwoord|mot[_-]?de[_-]?passe|motdepasse|kennwort|contrase(?:n|ni)a|haslo|salasana|"
    r"losenord|adgangskode|passord|parola|(?<![a-z])clave(?![a-z])|sifre|jelszo|heslo",
    re.IGNORECASE,
)
_NAME_HINTS = ("pass", "pwd", "secret", "token", "apikey", "api_key", "api-key", "private_key",
               "private-key", "privatekey", "credential", "auth", "cookie", "_pat", "pat_", "senha",
               "wachtwoord", "mot_de", "motde", "mot-de", "kennwort", "contrase", "haslo",
               "salasana", "losenord", "adgangskode", "passord", "parola", "clave", "sifre",
               "jelszo", "heslo")  # fmt: skip
# Names about a secret, not holding one: messages, rules and fields of a form.
_ABOUT = re.compile(
    r"too[_-]?(?:short|long|weak)|invalid|required|mismatch|error|hint|help|prompt|forgot|strength|"
    r"validation|_?msg\b|message|label|policy|rule|min[_-]?len|max[_-]?len|expir|field|input|"
    r"routing|public|_?id\b|name\b|url\b|path|file|type|kind|mode|count|size|length|prefix|format|"
    r"endpoint|set-cookie",
    re.IGNORECASE,
)
_LITERAL = r"""(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
_NAMED_KEY = re.compile(
    r"""(?P<key>[A-Za-z_$@][\w.$-]*)["'\]]{0,2}[ \t]*(?::=|=>|=|:(?!:))[ \t]*"""
)
_VALUE = re.compile(rf"""{_LITERAL}|[^\s'"`,;]+""")
_PLACEHOLDER = re.compile(
    r"""^(?:\$\{?[\w:.-]*\}?|\$\{.*|\$\(.*\)|\\\(.*|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|%\(?\w*\)?s?%?|\{\{.*\}\}|\{\w*\}|#\{.*\}|<[^>]*>?|\*+|x{3,}|"""
    r"""\.\.\.|(?-i:[A-Z][A-Z0-9_]*)|.*(?:your[_-]|[_-]here\b|insert|replace|changeme|example|dummy|placeholder|redacted|"""
    r"""password|passwd|secret|token|"""
    r"""\[secret\]).*|none|null|nil|true|false|undefined|(?:os\.)?environ.*|process\.env.*|getenv.*|env\(.*)$""",
    re.IGNORECASE,
)
_CODE = re.compile(
    r"^(?:[A-Za-z_$][\w$]*(?:(?:\.|::)[A-Za-z_$][\w$]*)*(?:\(.*|\[.*)?|[A-Za-z_]+\??|\d+|"
    r"[A-Za-z]+(?:-[A-Za-z]+)+|@\w+|[(\[].*|\{[ \t]*(?:[A-Za-z_][\w.]*|\d+)?[ \t]*(?:,.*|\}.*)?)$"
)  # a name, a dotted path, a call or index, a word, a number, a cmdlet, a tuple or list of names
_POSITIONS = [  # (hints, kind, pattern with a group "v": the value)
    (("sshpass",), "value", rf"\bsshpass[ \t]+-p[ \t]*(?P<v>{_LITERAL}|\S+)"),
    (("mysql", "mariadb"), "value", r"\b(?:mysql|mysqldump|mysqladmin|mariadb)\b[^\n|;]*?[ \t]-p(?P<v>[^\s'\"-]\S*|'[^']+'|\"[^\"]+\")"),
    (("pass:",), "value", r"-pass(?:in|out)?[ \t]+pass:(?P<v>\S+)"),
    (("--pass", "--token", "--secret", "--api", "--auth"), "value",
     rf"--(?:password|passwd|pass|token|secret|api-?key|auth-token)(?:[ \t]+|=)(?P<v>{_LITERAL}|[^\s-]\S*)"),
    (("identified",), "value", rf"(?i:\bidentified[ \t]+by[ \t]+)(?P<v>{_LITERAL})"),
    (("requirepass", "masterauth"), "value", r"\b(?:requirepass|masterauth)[ \t]+(?P<v>\S+)"),
    (("vault",), "value", r"\bvault[ \t]+login[ \t]+(?:-\S+[ \t]+)*(?P<v>[^\s-]\S{7,})"),
    (("docker",), "value", r"\becho[ \t]+(?P<v>\"[^\"$\n]{6,}\"|'[^'\n]{6,}')[ \t]*\|[ \t]*docker[ \t]+login"),
    (("curl",), "value", r"\bcurl\b[^\n]*?[ \t]-u[ \t]*['\"]?[^\s:'\"]+:(?P<v>[^\s'\"@\\]+)"),
    (("authorization",), "value", r"(?i:\bauthorization\b)[\"']?[ \t]*[:=][ \t]*[\"']?[A-Za-z-]+[ \t]+(?P<v>[A-Za-z0-9._~+/=-]{8,})"),
    (("auth",), "value", rf"\bauth[ \t]*=[ \t]*\([ \t]*(?:{_LITERAL}|\w+)[ \t]*,[ \t]*(?P<v>{_LITERAL})"),
    (("login", "connect", "credential", "auth"), "value",
     rf"(?i:\b(?:login|getconnection|connect|\w{{0,30}}credentials?|authenticate|basicauth))[ \t]*\((?:[^()\n]*?,)+[ \t]*(?P<v>{_LITERAL})[ \t]*\)"),
    (("pass", "secret", "token", "pwd", "auth"), "value",
     rf"\b(?:define|env|getenv|config)[ \t]*\([ \t]*(?P<name>{_LITERAL})[ \t]*,[ \t]*(?P<v>{_LITERAL})"),
    (("securestring",), "value", rf"(?i:convertto-securestring)[ \t]+(?:-string[ \t]+)?(?P<v>{_LITERAL})"),
    (('variable "',), "value", r"\bvariable[ \t]+\"(?P<name>[^\"]+)\"[ \t]*\{[^}]{0,400}?\bdefault[ \t]*=[ \t]*(?P<v>\"[^\"\n]*\")"),
    (("://",), "value", r"://[^\s:/@'\"]*:(?P<v>[^\s/'\"@]*@[^\s/'\"@]*)@"),  # a password holding a raw @
    (("passphrase", "password", "passcode"), "strict",
     r"(?i:\b(?:passphrase|password|passcode)\b)[ \t]+(?:(?:is|was)[ \t]+)?(?P<v>[^\s,;]{4,})"),
    (("login", "credential", "account"), "strict", r"(?i:\b(?:login|credentials?|account)\b)[^\n/]{0,40}?\b\w+[ \t]+/[ \t]+(?P<v>[^\s,;]{4,})"),
    ((":5432:", ":3306:", "pgpass"), "value", r"(?m)^[+ -]?[^\s:]+:\d+:[^\s:]+:[^\s:]+:(?P<v>\S+)$"),
    ((), "hex",  # read wherever a 32+ hex run is (`_chunks`), not by hints
     r"(?P<name>[\w.-]*(?i:key|secret|hmac|salt|token)[\w.-]*)[\"']?[ \t]*(?:[:=][ \t]*|=[ \t]*bytes\.fromhex\([ \t]*)[\"']?(?P<v>[0-9a-fA-F]{32,})\b"),
    (("sl.",), "shape", r"\b(?P<v>sl\.[A-Za-z0-9_-]{100,})"),  # Dropbox
    (("sk.eyj",), "shape", r"\b(?P<v>sk\.eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{10,})"),  # Mapbox secret
]  # fmt: skip
# kind: "value" (masked unless `_value_like` finds it is none), "strict" (prose: it must look like
# a password too), "shape" (a token's own shape is enough), "hex" (a hex key beside a key's name)
_POSITION_RULES = [(hints, kind, re.compile(p)) for hints, kind, p in _POSITIONS]
_ALL_HINTS_FOUND = sorted({h for hints, _, _ in _POSITIONS for h in hints} | set(_NAME_HINTS))
_IMPLICIT_CONCAT = re.compile(
    rf"=[ \t]*\([ \t]*\n?(?P<body>(?:[ \t+]*{_LITERAL}[ \t]*\n?){{2,}})[ \t+]*\)"
)


def _looks_random(value: str) -> bool:
    """Letters and digits drawn at random, at any length: both cases, a digit or many capitals, and
    lowercase runs short on average (an identifier's are words: `SomeLongName2`)."""
    core = re.sub(r"[^A-Za-z0-9]", "", value)
    if len(core) < 16 or not (re.search("[a-z]", core) and re.search("[A-Z]", core)):
        return False
    runs = re.findall("[a-z]+", core)
    upper = sum(c.isupper() for c in core) / len(core)
    digits = any(c.isdigit() for c in core)
    return sum(map(len, runs)) / len(runs) < 3.5 and (digits or 0.25 <= upper <= 0.75)


def _value_like(raw: str, strict: bool = True) -> bool:
    """Whether a literal beside a secret's name may be its value: not a reference, placeholder,
    code (unquoted only) or prose. ``strict`` (a bare position such as prose): it must also look
    like a password (a digit or symbol, or mixed case)."""
    quoted = raw[:1] in "\"'`" and raw[-1:] == raw[:1] and len(raw) >= 2
    value = raw[1:-1] if quoted else raw.rstrip(".,;:)]}")
    if len(value) < 4 or MASK in value or _PLACEHOLDER.match(value):
        return False
    words = value.split()
    if len(words) >= 3 and all(w.isalpha() for w in words[:-1]):
        return False  # prose: "Password must be at least 12 characters"
    if not quoted and _CODE.match(value) and not _looks_random(value):
        return False  # form.password, request.args, a word, a number (a key is none of them)
    if strict and not quoted:
        return _password_like(value) or _random_looking(value)
    return True


_HEX_RUN = re.compile(r"[0-9a-fA-F]{32}")
_CONTEXT_LINES = 3  # lines around a hint: a Terraform block, joined strings, a heredoc


def _chunks(text: str) -> list[tuple[int, int]]:
    """The parts of ``text`` the pass by principle reads: the lines holding one of its hints (or
    a hex run beside a key's name), with a few lines around each, merged. Most lines of a diff
    hold none: a 2,000-line diff is read in a few short pieces, not whole by two dozen rules.
    (Each hint is looked for with `str.find`: one regex alternation of them all scanned 30x
    slower.)"""
    low = text.lower()
    hits: list[int] = []
    for hint in _ALL_HINTS_FOUND:
        at = low.find(hint)
        while at >= 0:
            hits.append(at)
            at = low.find(hint, low.find("\n", at) + 1 or len(low))  # one hit a line is enough
    if any(w in low for w in ("key", "hmac", "salt", "secret", "token")):
        hits += [m.start() for m in _HEX_RUN.finditer(text)]
    spans: list[tuple[int, int]] = []
    for at in sorted(hits):
        if spans and at < spans[-1][1]:
            continue
        start = at
        for _ in range(_CONTEXT_LINES + 1):
            start = text.rfind("\n", 0, start - 1) + 1 if start > 0 else 0
        end = at
        for _ in range(_CONTEXT_LINES + 1):
            nxt = text.find("\n", end + 1)
            end = len(text) if nxt < 0 else nxt
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def _mask_named_values(text: str) -> str:
    spans = _chunks(text)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], _mask_named_chunk(text[start:end])]
        last = end
    out.append(text[last:])
    return "".join(out)


def _mask_named_chunk(text: str) -> str:
    low = text.lower()
    if any(h in low for h in _NAME_HINTS):
        # Keys are found without consuming their values, so `Pwd=` inside a quoted connection
        # string is seen too; the spans to mask are collected, then replaced from the end.
        spans = []
        for m in _NAMED_KEY.finditer(text):
            key = m.group("key")
            if not _NAME.search(key) or _ABOUT.search(key):
                continue
            v = _VALUE.match(text, m.end())
            if v is None or not _value_like(v.group(0), False):
                continue
            quoted = v.group(0)[:1] in "\"'" and len(v.group(0)) >= 2
            spans.append((v.start() + quoted, v.end() - quoted))
        for start, end in reversed(spans):
            text = text[:start] + MASK + text[end:]

        def joined(m: re.Match) -> str:
            before = m.string[max(0, m.start() - 60) : m.start()].rsplit("\n", 1)[-1]
            if not _NAME.search(before) or _ABOUT.search(before):
                return m.group(0)
            return re.sub(_LITERAL, lambda x: x.group(0)[0] + MASK + x.group(0)[0], m.group(0))

        if "(" in text:
            text = _IMPLICIT_CONCAT.sub(joined, text)
        low = text.lower()
    hexed = _HEX_RUN.search(text) is not None
    for hints, kind, rule in _POSITION_RULES:
        if any(h in low for h in hints) or (hexed and kind == "hex"):
            text = rule.sub(lambda m, kind=kind: _positional(m, kind), text)
            low = text.lower()
    return text


def _positional(m: re.Match, kind: str) -> str:
    """A value where a secret goes (`_POSITIONS`), masked unless it reads as no value: a name
    group must name a secret (or, beside a hex key, a key), prose and login lines must look like
    passwords, and a token's own shape needs no more."""
    value, name = m.group("v"), m.groupdict().get("name")
    if name is not None and not (_NAME.search(name) or re.search(r"key|hmac|salt", name, re.I)):
        return m.group(0)
    if name is not None and _CHECKSUM_KEY.search(name + " "):
        return m.group(0)
    if kind != "shape" and not _value_like(value, kind == "strict"):
        return m.group(0)
    inner = value[1:-1] if value[:1] in "\"'" and value[-1:] == value[:1] else value
    start, end = m.span("v")
    whole = m.group(0)
    return whole[: start - m.start()] + value.replace(inner, MASK) + whole[end - m.start() :]
