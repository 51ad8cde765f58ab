"""A second corpus: the families of secrets the first one's rules did not reason about (issue 30).

Written from the families a reviewer found missed (values that look like code, long values, secret
names in other languages or spelled unusually, command-line and header positions, call arguments,
split or escaped values, prose), never from cmc's rules. Secrets are generated from a fixed seed, so
the repository holds no real one. Each positive is (family, text, secret); each negative (family,
text) must come out unchanged.
"""

from __future__ import annotations

import base64
import json

from secret_corpus import ALNUM, HEX, LOWER, mixed, rnd


def _pw() -> str:
    """A password as people write them: a word, digits, a symbol."""
    return rnd(LOWER, 1).upper() + rnd(LOWER, 5) + rnd("0123456789", 3) + rnd("!#%*+-?", 1)


def positives() -> list[tuple[str, str, str]]:
    cases: list[tuple[str, str, str]] = []

    def add(family: str, template: str, secret: str) -> None:
        cases.append((family, template.replace("{s}", secret), secret))

    # values that look like code
    add("code-shaped", 'password: "{s}"', "Tr0ub." + rnd(ALNUM, 6))
    add("code-shaped", "SECRET_KEY = '{s}'", "&" + rnd(ALNUM + "!@#%^*(-_=+)", 49))
    add("code-shaped", 'conn = "Driver={ODBC};Server=db;Uid=app;Pwd={s};"', "{" + _pw() + "}")
    add("code-shaped", "auth_token: '@{s}'", mixed(30))
    # long values
    add("long", "SESSION_TOKEN={s}", mixed(260))
    add("long", 'private_key_b64 = "{s}"', base64.b64encode(bytes(range(200))).decode())
    sa = base64.b64encode(json.dumps({"type": "service_account", "private_key_id": rnd(HEX, 40),
                                      "client_email": "ci@p.iam.example.com"}).encode()).decode()  # fmt: skip
    add("long", "GOOGLE_CREDENTIALS: {s}", sa)
    # names in other languages or spelled unusually
    for name in ("senha", "wachtwoord", "mot_de_passe", "Passwort", "contrasena", "haslo", "salasana",
                 "kennwort", "parola_segreta"):  # fmt: skip
        add("other-language", f'{name} = "{{s}}"', _pw())
    add("unusual-name", "erlangCookie: {s}", mixed(24))
    add("unusual-name", "REDIS_AUTH={s}", mixed(32))
    add("unusual-name", "GITLAB_PAT={s}", mixed(26))
    add("unusual-name", "export DEPLOY_PAT={s}", mixed(40))
    add("unusual-name", "rabbit_pass := {s}", _pw())
    add("line-above", 'variable "db_password" {\n  type    = string\n  default = "{s}"\n}', _pw())
    # command-line arguments and headers
    add("cli", "sshpass -p '{s}' ssh deploy@host", _pw())
    add("cli", "mysql -u root -p{s} app < dump.sql", _pw())
    add("cli", "openssl enc -aes-256-cbc -pass pass:{s} -in a -out b", mixed(20))
    add("cli", 'echo "{s}" | docker login -u bot --password-stdin', mixed(30))
    add("cli", "vault login {s}", "s." + mixed(24))
    add("cli", "CREATE USER app IDENTIFIED BY '{s}';", _pw())
    add("cli", "requirepass {s}", mixed(24))
    add("header", "Authorization: SSWS {s}", "00" + mixed(40))
    add(
        "header",
        "-H 'Authorization: Basic {s}'",
        base64.b64encode(f"bot:{_pw()}".encode()).decode(),
    )
    # call arguments
    add("call", 'requests.get(url, auth=("deploy", "{s}"))', _pw())
    add("call", 'DriverManager.getConnection(url, "sa", "{s}");', _pw())
    add("call", 'server.login("bot@example.com", "{s}")', _pw())
    add("call", 'pika.PlainCredentials("guest", "{s}")', _pw())
    add("call", "$password = env('DB_PASSWORD', '{s}');", _pw())
    add("call", "define('DB_PASSWORD', '{s}');", _pw())
    add("call", '$pw = ConvertTo-SecureString "{s}" -AsPlainText -Force', _pw())
    # split or escaped
    add("split", 'API_SECRET = (\n    "{s}"\n    "' + rnd(ALNUM, 16) + '"\n)', mixed(20))
    add("split", "curl -u admin:{s} \\\n  https://ci.example.com/api", _pw())
    add("split", "cat > .pgpass <<EOF\ndb:5432:app:app:{s}\nEOF", _pw())
    add("escaped", 'token = "\\x73\\x6b{s}"', mixed(24))
    add("url", "postgres://app:{s}@db.example.com/app", _pw()[:4] + "@" + mixed(8))
    add("hex", 'hmac_key = bytes.fromhex("{s}")', rnd(HEX, 64))
    add("hex", "ENCRYPTION_KEY={s}", rnd(HEX, 64))
    # token shapes
    add("shape", "DROPBOX_TOKEN={s}", "sl." + mixed(130))
    add("shape", "mapbox: {s}", "sk.eyJ1Ijoi" + mixed(40) + "." + mixed(22))
    # prose (commit messages)
    add("prose", "Set up staging. The passphrase is {s} for now", _pw())
    add("prose", "Login for the demo: admin / {s}", _pw())
    add("prose", "temporary password {s}, change it after the first login", _pw())
    return cases


def negatives() -> list[tuple[str, str]]:
    return [
        ("placeholder", 'API_KEY = "your-api-key-here"'),
        ("placeholder", "password: <insert password>"),
        ("placeholder", "DB_PASSWORD=${DB_PASSWORD:-}"),
        ("i18n", 'password_too_short: "Password must be at least 12 characters"'),
        ("i18n", "senha_invalida = 'A senha deve ter pelo menos 8 caracteres'"),
        (
            "base64-prose",
            "MESSAGE = "
            + base64.b64encode(b"The quick brown fox jumps over the lazy dog").decode(),
        ),
        ("code", "password = form.cleaned_data['password']"),
        ("code", "token = jwt.encode(payload, key, algorithm='HS256')"),
        ("code", "auth=(user, password)"),
        ("code", "getConnection(url, user, password)"),
        ("code", "server.login(user, password)"),
        ("code", "mysql -u root -p app < dump.sql"),
        ("code", 'sshpass -p "$SSHPASS" ssh deploy@host'),
        ("code", "Authorization: Bearer ${TOKEN}"),
        ("code", "define('DB_PASSWORD', getenv('DB_PASSWORD'));"),
        ("code", "routing_key = 'orders.created'"),
        ("prose", "The passphrase is now read from the keychain"),
        ("prose", "Document the admin / user roles"),
        ("identifier", "senha = request.form.get('senha')"),
        ("version", "Bump pnpm from 6.0.9 to 6.0.10"),
    ]
