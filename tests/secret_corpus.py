"""A corpus of realistic secrets (one or more per rule family) and of look-alikes that must stay.

Tokens are generated here from a fixed seed, never committed as literals, so the repository holds
nothing a secret scanner would (rightly) flag. Each positive case is (family, text, secret): the
text as it would stand in a file or message, and the part that must not reach the model. Each
negative case is (family, text): nothing in it may be masked.
"""

from __future__ import annotations

import base64
import random
import string

_rng = random.Random(20261128)
LOWER, UPPER, DIGITS = string.ascii_lowercase, string.ascii_uppercase, string.digits
ALNUM = LOWER + UPPER + DIGITS
HEX = DIGITS + "abcdef"
B64URL = ALNUM + "_-"


def rnd(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def mixed(n: int) -> str:
    """Random alphanumerics with all three classes (as real keys have)."""
    while True:
        s = rnd(ALNUM, n)
        if (
            any(c.islower() for c in s)
            and any(c.isupper() for c in s)
            and any(c.isdigit() for c in s)
        ):
            return s


def _pem(kind: str) -> tuple[str, str]:
    body = "\n".join(rnd(ALNUM + "+/", 64) for _ in range(4))
    return (
        f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----",
        body.split("\n")[1],
    )


def positives() -> list[tuple[str, str, str]]:
    cases: list[tuple[str, str, str]] = []

    def add(family: str, template: str, secret: str) -> None:
        cases.append((family, template.format(s=secret), secret))

    for prefix in ("AKIA", "ASIA"):
        for _ in range(2):
            add("aws-key-id", "AWS_ACCESS_KEY_ID={s}", prefix + rnd(UPPER + DIGITS, 16))
    add("aws-key-id", "aws configure set aws_access_key_id {s}", "AKIA" + rnd(UPPER + DIGITS, 16))
    for template in ('aws_secret_access_key = "{s}"', "AWS_SECRET_ACCESS_KEY: {s}"):
        add("aws-secret", template, mixed(40))
    for p in ("ghp_", "gho_", "ghs_", "ghu_", "ghr_"):
        add("github", 'token = "{s}"' if p == "ghp_" else "export GH_TOKEN={s}", p + mixed(36))
    add("github", "git clone https://x-access-token:{s}@github.com/o/r", "ghs_" + mixed(36))
    add("github", "github_pat_{s}", mixed(22) + "_" + mixed(59))
    for p in ("glpat-", "gldt-", "glrt-"):
        add("gitlab", "CI_TOKEN: {s}", p + rnd(B64URL, 20))
    for p in ("xoxb-", "xoxp-", "xoxa-"):
        add(
            "slack",
            "slack_token: {s}",
            p + rnd(DIGITS, 12) + "-" + rnd(DIGITS, 12) + "-" + mixed(24),
        )
    add(
        "slack-webhook",
        "url = {s}",
        "https://hooks.slack.com/services/T"
        + rnd(UPPER + DIGITS, 8)
        + "/B"
        + rnd(UPPER + DIGITS, 8)
        + "/"
        + mixed(24),
    )
    add(
        "slack-webhook",
        "SLACK_WEBHOOK={s}",
        "https://hooks.slack.com/services/T"
        + rnd(UPPER + DIGITS, 10)
        + "/B"
        + rnd(UPPER + DIGITS, 10)
        + "/"
        + mixed(24),
    )
    for p in ("sk_live_", "rk_live_", "sk_test_", "rk_test_"):
        add(
            "stripe",
            "stripe.api_key = '{s}'" if p.startswith("sk") else "const k = {s};",
            p + mixed(24),
        )
    add("stripe", "STRIPE_SECRET={s}", "sk_live_" + mixed(99))
    for p in ("sk-proj-", "sk-", "sk-ant-api03-"):
        add(
            "openai-anthropic",
            "client = OpenAI(api_key={s})" if p != "sk-ant-api03-" else "ANTHROPIC_API_KEY={s}",
            p + rnd(B64URL, 48),
        )
    for _ in range(3):
        add("google-api", "const apiKey = '{s}';", "AIza" + rnd(B64URL, 35))
    add("google-oauth", "headers = {{'x': 'ya29.{s}'}}", rnd(B64URL, 60))
    for _ in range(3):
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
        payload = (
            base64.urlsafe_b64encode(f'{{"sub":"{rnd(DIGITS, 8)}","name":"x"}}'.encode())
            .decode()
            .rstrip("=")
        )
        add("jwt", "jwt: {s}", f"{header}.{payload}.{rnd(B64URL, 43)}")
    for _ in range(2):
        add("npm", "//registry.npmjs.org/:_authToken=npm_{s}", mixed(36))
    add("npm", "NPM_TOKEN=npm_{s}", mixed(36))
    for _ in range(2):
        add("pypi", "password = pypi-AgEIcHlwaS5vcmc{s}", rnd(B64URL, 70))
    add("pypi", "TWINE_PASSWORD: pypi-AgEIcHlwaS5vcmc{s}", rnd(B64URL, 80))
    for _ in range(3):
        add(
            "huggingface",
            "login(token='hf_{s}')" if _ else "HF_TOKEN=hf_{s}",
            rnd(LOWER + UPPER, 34),
        )
    for _ in range(3):
        add("sendgrid", "SENDGRID_API_KEY={s}", f"SG.{rnd(B64URL, 22)}.{rnd(B64URL, 43)}")
    for _ in range(2):
        add("twilio", "TWILIO_API_KEY={s}", "SK" + rnd(HEX, 32))
    add("twilio", "TWILIO_AUTH_TOKEN={s}", rnd(HEX, 32))
    for p in ("hvs.", "hvb."):
        add("vault", "VAULT_TOKEN={s}", p + mixed(90))
    add("vault", "vault login {s}", "hvs." + mixed(24))
    for _ in range(3):
        add("telegram", "bot = Bot('{s}')", rnd(DIGITS, 10) + ":AA" + rnd(B64URL, 33))
    for _ in range(2):
        add(
            "discord",
            "client.run('{s}')",
            "M" + mixed(25) + "." + rnd(B64URL, 6) + "." + rnd(B64URL, 38),
        )
    add(
        "discord-webhook",
        "WEBHOOK = '{s}'",
        f"https://discord.com/api/webhooks/{rnd(DIGITS, 18)}/{rnd(B64URL, 68)}",
    )
    for _ in range(2):
        add("mailgun", "MAILGUN_KEY={s}", "key-" + rnd(DIGITS + LOWER, 32))
    for _ in range(2):
        add("age", "{s}", "AGE-SECRET-KEY-1" + rnd(UPPER + DIGITS, 58))
    add("shopify", "SHOPIFY_TOKEN={s}", "shpat_" + rnd(HEX, 32))
    add("digitalocean", "DO_TOKEN={s}", "dop_v1_" + rnd(HEX, 64))
    add("doppler", "DOPPLER_TOKEN={s}", "dp.st." + mixed(43))
    add("linear", "LINEAR_API_KEY={s}", "lin_api_" + mixed(40))
    add("databricks", "host: x\ntoken: {s}", "dapi" + rnd(HEX, 32))
    add("square", "SQUARE_ACCESS_TOKEN={s}", "sq0atp-" + rnd(B64URL, 22))
    add("postman", "POSTMAN_API_KEY={s}", f"PMAK-{rnd(HEX, 24)}-{rnd(HEX, 34)}")
    add("grafana", "GRAFANA_TOKEN={s}", f"glsa_{mixed(32)}_{rnd(HEX, 8)}")
    add("newrelic", "NEW_RELIC_API_KEY={s}", "NRAK-" + rnd(UPPER + DIGITS, 27))
    add("docker", "echo {s} | docker login -u me --password-stdin", "dckr_pat_" + mixed(27))
    add("rubygems", "GEM_HOST_API_KEY: {s}", "rubygems_" + rnd(HEX, 48))
    for kind in ("RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED "):
        block, line = _pem(kind)
        cases.append(("private-key", block, line))
    block, line = _pem("RSA ")
    cases.append(("private-key", "key = '''\n" + block + "\n'''", line))
    putty_line = rnd(ALNUM + "+/", 64)
    cases.append(
        (
            "putty",
            f"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPublic-Lines: 1\n{rnd(ALNUM, 40)}\nPrivate-Lines: 1\n{putty_line}\nPrivate-MAC: {rnd(HEX, 64)}",
            putty_line,
        )
    )
    pg_pw, mongo_pw, redis_pw, amqp_pw, mysql_pw = (mixed(16) for _ in range(5))
    add("url-credentials", "DATABASE_URL=postgres://app:{s}@db.internal:5432/app", pg_pw)
    add("url-credentials", "MONGO_URI=mongodb+srv://admin:{s}@cluster0.example.net/test", mongo_pw)
    add("url-credentials", "redis_url: redis://default:{s}@cache:6379/0", redis_pw)
    add("url-credentials", "broker = 'amqp://guest:{s}@rabbit//'", amqp_pw)
    add(
        "url-credentials",
        "engine = create_engine('mysql+pymysql://root:{s}@localhost/db')",
        mysql_pw,
    )
    add("url-credentials", "https://deploy:{s}@git.example.com/repo.git", mixed(20))
    for scheme in ("Bearer", "Basic", "token"):
        add("authorization", "Authorization: " + scheme + " {s}", mixed(40))
    add("authorization", "headers = {{'Authorization': 'Bearer {s}'}}", mixed(40))
    add("authorization", 'curl -H "Authorization: Bearer {s}" https://api.example.com', mixed(32))
    add("curl-user", "curl -u admin:{s} https://api.example.com", mixed(14))
    add("curl-user", "curl --user deploy:{s} -X POST https://ci.example.com", mixed(14))
    add("connection-string", "Server=tcp:db;Database=app;User Id=sa;Password={s};", mixed(16))
    add(
        "azure-storage",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={s};EndpointSuffix=core.windows.net",
        rnd(ALNUM + "+/", 86) + "==",
    )
    add(
        "azure-sas",
        "https://acct.blob.core.windows.net/c?sv=2022-11-02&sp=r&sig={s}",
        rnd(ALNUM, 40) + "%3D",
    )
    add("netrc", "machine api.example.com login me password {s}", mixed(18))
    for template in ('password = "{s}"', "PASSWORD={s}", "db_password: {s}", '"client_secret": "{s}"',
                     "SECRET_KEY = '{s}'", "api_key: {s}", "private_key_pass = \"{s}\"", "encryption_key => '{s}'",
                     "JWT_SECRET={s}", "auth_token := \"{s}\"", "REDIS_PASSWORD={s}", "app.secret = {s}",
                     "passphrase: {s}", "export API_KEY={s}", "signing_key: \"{s}\""):  # fmt: skip
        add("keyword", template, mixed(14))
    add("keyword", 'password = "{s}"', "correct horse battery staple")
    add("keyword", "PASSWORD={s}", "hunter2!")
    for _ in range(3):
        add("high-entropy", 'const value = "{s}";', mixed(44))
    add("high-entropy", "  config.cipher = '{s}'", rnd(ALNUM + "+/", 40) + "==")
    k8s = base64.b64encode(mixed(20).encode()).decode()
    add("kubernetes-secret", "data:\n  password: {s}", k8s)
    add("kubernetes-secret", "  db-pass: {s}", base64.b64encode(mixed(24).encode()).decode())
    pem_b64 = base64.b64encode(_pem("RSA ")[0].encode()).decode()
    add("kubeconfig", "    client-key-data: {s}", pem_b64)
    add("password-hash", "admin:{s}", "$apr1$" + rnd(ALNUM, 8) + "$" + rnd(ALNUM + "./", 22))
    add(
        "password-hash",
        "root:{s}:19000:0:99999:7:::",
        "$6$" + rnd(ALNUM, 16) + "$" + rnd(ALNUM + "./", 86),
    )
    add("password-hash", "user:{s}", "$2y$10$" + rnd(ALNUM + "./", 53))
    # More of the most common shapes, as they appear in configs, shells and code.
    for _ in range(4):
        add("aws-key-id", '"AccessKeyId": "{s}",', "AKIA" + rnd(UPPER + DIGITS, 16))
        add("github", "GITHUB_TOKEN: {s}", "ghp_" + mixed(36))
        add("url-credentials", "amqps://svc:{s}@mq.example.org:5671", mixed(18))
        add("authorization", "req.headers['Authorization'] = 'Bearer {s}'", rnd(B64URL, 48))
    for template in ("DB_PASS={s}", "mysql_root_password: {s}", 'config["api_key"] = "{s}"',
                     "set -x SECRET {s}", "client_secret={s}", "access_token = '{s}'",
                     "setenv DB_PASSWORD {s}", "<password>{s}</password>"):  # fmt: skip
        add("keyword", template, mixed(20))
    # Where the structure, not a rule for the value, names the secret (round 2 of hardening).
    add("csv-column", "user,password,role\nadmin,{s},owner", mixed(12) + "!")
    add("csv-column", "+service;api_token;expires\n+billing;{s};2027-01-01", mixed(24))
    add("yaml-block-scalar", "db:\n  password: |\n    {s}\n  host: db", mixed(16) + "#")
    add("yaml-block-scalar", "+secret_key: >-\n+  {s}", mixed(30))
    add("xml-attribute", '<add key="Password" value="{s}" />', mixed(14))
    add("xml-attribute", '<property value="{s}" name="db.password"/>', mixed(14))
    add("url-empty-user", "REDIS_URL=rediss://:{s}@cache.example.com:6380/0", mixed(20))
    add("url-empty-user", "dsn = 'clickhouse://:{s}@ch:9000/default'", mixed(20))
    add("hex-key", 'KEY = bytes.fromhex("{s}")', rnd(HEX, 64))
    add("hex-key", "const key = Buffer.from('{s}', 'hex');", rnd(HEX, 64))
    add("positional", 'client = ApiClient("{s}")', mixed(28))
    add("positional", "stripe = Gateway(region='eu', key='{s}')", mixed(32))
    add("dotted-bot-token", "BOT = {s}", f"{mixed(26)}.{mixed(6)}.{mixed(38)}")
    add("message", "Move the job to prod and use password {s} for the new DB", mixed(10) + "$")
    add("message", "Reset the admin password to {s} on staging", mixed(9) + "7")
    add("comparison", 'if (api_key == "{s}") {{', mixed(24))
    add("comparison", 'if ("{s}" === password) {{', mixed(24))
    add("flag", "deploy --api-key {s} --region eu", mixed(32))
    return cases


def negatives() -> list[tuple[str, str]]:
    uuid = f"{rnd(HEX, 8)}-{rnd(HEX, 4)}-4{rnd(HEX, 3)}-a{rnd(HEX, 3)}-{rnd(HEX, 12)}"
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    return [
        ("commit-hash", f"Revert {rnd(HEX, 40)}"),
        ("commit-hash", f"git checkout {rnd(HEX, 12)}"),
        ("commit-hash", f'EXPECTED_SHA = "{rnd(HEX, 40)}"'),
        ("checksum", f'sha256 = "{rnd(HEX, 64)}"'),
        ("checksum", f"integrity: sha512-{rnd(HEX, 32)}"),
        ("checksum", f'"checksum": "{rnd(HEX, 32)}"'),
        ("uuid", f'id = "{uuid}"'),
        ("uuid", f"request_id: {uuid}"),
        ("version", 'version = "1.24.3"'),
        ("version", "Bump requests from 2.31.0 to 2.32.3"),
        ("version", "torch==2.13.0+cpu"),
        ("base64-fixture", f'PIXEL = "{png}"'),
        ("base64-fixture", 'img = "data:image/png;base64,' + png + '"'),
        ("code", "password = request.form['password']"),
        ("code", "token = tokenizer.encode(text, add_special_tokens=False)"),
        ("code", "secret = os.environ['APP_SECRET']"),
        ("code", 'api_key = os.getenv("API_KEY")'),
        ("code", "self.password = password"),
        ("code", "const token = await getToken();"),
        ("code", "if password is None:"),
        ("code", "max_tokens: 512"),
        ("code", "access_key = config.access_key"),
        ("code", "auth = HTTPBasicAuth(user, password)"),
        ("code", "tokens = [t for t in tokens if t]"),
        ("code", "def check_password(password: str) -> bool:"),
        ("placeholder", "PASSWORD=changeme"),
        ("placeholder", "API_KEY=${API_KEY}"),
        ("placeholder", "password: <your-password>"),
        ("placeholder", 'token = "{{ token }}"'),
        ("placeholder", "SECRET_KEY=xxxxxxxx"),
        ("placeholder", "secret: ********"),
        ("prose", "Fix password validation when the field is empty"),
        ("prose", "The token must be at least 8 characters long"),
        ("prose", "Rotate the API key every 90 days"),
        ("prose", "Use a Bearer token for the new endpoint"),
        ("prose", "password must contain a digit"),
        ("identifier", 'name = "ThisIsAVeryLongCamelCaseIdentifierName"'),
        ("identifier", 'CACHE_KEY_PREFIX = "user_profile_cache_key_v2_prefix"'),
        ("url", "https://github.com/owner/repo/pull/1234"),
        ("url", "Visit http://localhost:8080/docs for details"),
        ("path", "src/components/AuthTokenProvider.tsx"),
        ("ssh-public-key", f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{rnd(ALNUM, 43)} me@host"),
        ("email-like", "Contact: admin@example.com"),
        ("number", "timeout = 30000"),
        ("regex", r'PATTERN = re.compile(r"^[A-Za-z0-9+/]{40}$")'),
        ("csv-no-secret", "name,email,role\nada,ada@example.com,owner"),
        ("yaml-block", "script: |\n  echo building\n  make test"),
        ("xml-attribute", '<add key="PageSize" value="50" />'),
        ("url", "postgres://localhost:5432/app"),
        ("hex-call", "digest = bytes.fromhex(expected)"),
        ("call", 'logger = logging.getLogger("cmc.memory.build")'),
        ("call", 'render(template="UserProfileSettingsPage")'),
        ("accessor", 'vault.getSecret("ProdDatabasePassword")'),
        ("prose", "Fix password reset when the token expired"),
        ("prose", "The PASSWORD MANAGER section is rewritten"),
        ("flag", "git log --pretty-token-format short"),
        ("dotted-name", "import com.example.payments.GatewayClientFactory"),
    ]
