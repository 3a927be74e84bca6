#!/usr/bin/env python3
"""seeds.py: writes the seed corpora under tests/fuzz/corpus/NAME/ (run from anywhere; idempotent).

The seeds are small real inputs, so that each harness starts from what pglane actually meets:
  - startup, msg: bytes captured between psql 15 (libpq) and PostgreSQL 15.20 (one login that ran
    "select 1 as x; select 1/0", one with a wrong password), recorded by a relay that answered the
    SSLRequest with 'N';
  - scram_server, scram_client: the RFC 7677 section 3 exchange ("pencil", the RFC's salt and nonces),
    PostgreSQL's variant of it (n= left empty), and -PLUS / "y" variants with proofs computed here;
  - conf, url: the example file and the integration tests' files, and the URL forms the docs use;
  - user: the user names of t_spine.sh's timelines, each with a database.
Each file starts with the harness's flag byte(s) where the harness has them (see each fuzz_NAME.c).
"""
import base64
import hashlib
import hmac
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# ---------------------------------------------------------------- captured bytes (hex)
SSL_REQUEST = "0000000804d2162f"
# psql -> PostgreSQL: StartupMessage, SASLInitialResponse, SASLResponse, Query, Terminate
OK_C2S = (
    "0000003f000300007573657200706f73746772657300646174616261736500706f737467726573006170706c69636174"
    "696f6e5f6e616d65007073716c00007000000036534352414d2d5348412d32353600000000206e2c2c6e3d2c723d447a"
    "676a4f6b39735557535743532f4a7a5268796d452b69700000006c633d626977732c723d447a676a4f6b397355575357"
    "43532f4a7a5268796d452b6936452f5a4a77674c646c5933452f54476846394e6e384c782c703d4c4563476e67334479"
    "5a646d445056414872514f526630445557584f7457546172332f726c7831784639343d510000001e73656c6563742031"
    "20617320783b2073656c65637420312f30005800000004"
)
# PostgreSQL -> psql: SASL, SASLContinue, SASLFinal, AuthOk, ParameterStatus..., BackendKeyData,
# ReadyForQuery, RowDescription, DataRow, CommandComplete, ErrorResponse, ReadyForQuery
OK_S2C = (
    "52000000170000000a534352414d2d5348412d3235360000520000005c0000000b723d447a676a4f6b39735557535743"
    "532f4a7a5268796d452b6936452f5a4a77674c646c5933452f54476846394e6e384c782c733d7363614374776a565734"
    "437164736d7a7474465067773d3d2c693d3430393652000000360000000c763d53344470437a786d556b61494d535164"
    "3279436330565a766741474c5a6b496d7477542f7a68306d4335453d520000000800000000530000001a6170706c6963"
    "6174696f6e5f6e616d65007073716c005300000019636c69656e745f656e636f64696e670055544638005300000017"
    "446174655374796c650049534f2c204d445900530000002664656661756c745f7472616e73616374696f6e5f72656164"
    "5f6f6e6c79006f6666005300000017696e5f686f745f7374616e646279006f6666005300000019696e74656765725f64"
    "61746574696d6573006f6e00530000001b496e74657276616c5374796c6500706f73746772657300530000001469735f"
    "737570657275736572006f6e0053000000197365727665725f656e636f64696e6700555446380053000000327365727665"
    "725f76657273696f6e0031352e3230202844656269616e2031352e32302d302b646562313275312900530000002373657373"
    "696f6e5f617574686f72697a6174696f6e00706f7374677265730053000000237374616e646172645f636f6e666f726d69"
    "6e675f737472696e6773006f6e00530000001554696d655a6f6e65004574632f555443004b0000000c00000476617e40fe"
    "5a0000000549540000001a00017800000000000000000000170004ffffffff0000440000000b00010000000131430000"
    "000d53454c4543542031004500000041534552524f5200564552524f5200433232303132004d6469766973696f6e2062"
    "79207a65726f0046696e742e63004c3836390052696e743464697600005a0000000549"
)
# PostgreSQL -> psql after a wrong password: ..., ErrorResponse 28P01
BAD_S2C = (
    "52000000170000000a534352414d2d5348412d3235360000520000005c0000000b723d41724641686f61696a6f4f704a"
    "72783266387052517a39755334686a4e767136486130766c5459344d30682b37424b4b2c733d7363614374776a565734"
    "437164736d7a7474465067773d3d2c693d34303936450000006853464154414c0056464154414c00433238503031004d"
    "70617373776f72642061757468656e7469636174696f6e206661696c656420666f7220757365722022706f7374677265"
    "73220046617574682e63004c3333340052617574685f6661696c65640000"
)


def frames(b):
    """Splits a stream of typed messages after an untyped startup packet (when there is one)."""
    out, i = [], 0
    while i + 5 <= len(b):
        n = int.from_bytes(b[i + 1:i + 5], "big")
        out.append(b[i:i + 1 + n])
        i += 1 + n
    return out


def put(name, fname, data):
    d = os.path.join(CORPUS, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, fname), "wb") as f:
        f.write(data)


def be32(n):
    return n.to_bytes(4, "big")


def startup(params, version=196608):
    body = be32(version) + b"".join(k + b"\0" + v + b"\0" for k, v in params) + b"\0"
    return be32(len(body) + 4) + body


# ---------------------------------------------------------------- SCRAM (RFC 5802 / 7677)
PASSWORD = b"pencil"
SALT_B64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
CNONCE = "rOprNGfwEbeRWgbNEkqO"
SNONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_CBIND = bytes([0x5a, 0x11, 0xe0]) + bytes(range(1, 30))  # fuzz_scram_server.c's cbind_data
CLIENT_CBIND = bytes([0xc0, 0xff, 0xee]) + bytes(range(1, 46))  # fuzz_scram_client.c's cbind_data


def keys(salt_b64, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD, base64.b64decode(salt_b64), iterations)
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    return ck, hashlib.sha256(ck).digest(), hmac.new(salted, b"Server Key", "sha256").digest()


def exchange(gs2, bare_user, cbind=b""):
    """client-first, server-first, client-final, server-final with the RFC's nonces and salt."""
    ck, sk, svk = keys(SALT_B64, 4096)
    bare = "n=%s,r=%s" % (bare_user, CNONCE)
    sfirst = "r=%s%s,s=%s,i=4096" % (CNONCE, SNONCE, SALT_B64)
    wp = "c=%s,r=%s%s" % (base64.b64encode(gs2.encode() + cbind).decode(), CNONCE, SNONCE)
    auth = ("%s,%s,%s" % (bare, sfirst, wp)).encode()
    sig = hmac.new(sk, auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig))
    final = wp + ",p=" + base64.b64encode(proof).decode()
    sfinal = "v=" + base64.b64encode(hmac.new(svk, auth, "sha256").digest()).decode()
    return gs2 + bare, sfirst, final, sfinal


def main():
    c2s, s2c, bad = bytes.fromhex(OK_C2S), bytes.fromhex(OK_S2C), bytes.fromhex(BAD_S2C)

    # startup: flag byte 0 (max_len 65536), then the packet
    put("startup", "libpq-ssl-request", b"\0" + bytes.fromhex(SSL_REQUEST))
    put("startup", "libpq-startup", b"\0" + c2s[:0x3f])
    put("startup", "libpq-startup-then-sasl", b"\0" + c2s[:0x3f + 1 + 0x36])
    put("startup", "cancel", b"\0" + be32(16) + be32(80877102) + be32(1142) + bytes.fromhex("617e40fe"))
    put("startup", "gssenc", b"\0" + be32(8) + be32(80877104))
    put("startup", "protocol-3.2-pq", b"\0" + startup([(b"user", b"demo-production"), (b"_pq_.x", b"1")], 196610))
    put("startup", "pglane-branch", b"\0" + startup([(b"user", b"demo--feature/Login-Page"),
                                                      (b"database", b"demo--feature/Login-Page"),
                                                      (b"options", b"-c search_path=foo")]))

    # msg: flag byte 0 (max_body 8192), field code 'C', then streams of typed messages
    put("msg", "server-login-query-error", b"\0C" + s2c)
    put("msg", "server-wrong-password", b"\0C" + bad)
    put("msg", "client-sasl-query", b"\0M" + c2s[0x3f:])
    for i, m in enumerate(frames(s2c)):
        if m[:1] in (b"E", b"R", b"K"):
            put("msg", "server-msg-%02d-%s" % (i, chr(m[0])), b"\4S" + m)

    # scram_server: flags, client-first NUL client-final
    cf, sf, fin, _ = exchange("n,,", "user")
    put("scram_server", "rfc7677", bytes([0x08]) + cf.encode() + b"\0" + fin.encode())
    cf, sf, fin, _ = exchange("n,,", "")
    put("scram_server", "postgres-style", bytes([0x08]) + cf.encode() + b"\0" + fin.encode())
    cf, sf, fin, _ = exchange("y,,", "")
    put("scram_server", "y-without-tls", bytes([0x08]) + cf.encode() + b"\0" + fin.encode())
    put("scram_server", "y-with-tls-downgrade", bytes([0x09]) + cf.encode() + b"\0" + fin.encode())
    cf, sf, fin, _ = exchange("p=tls-server-end-point,,", "", SERVER_CBIND)
    put("scram_server", "plus", bytes([0x08 | 0x01 | 0x02]) + cf.encode() + b"\0" + fin.encode())
    put("scram_server", "plus-random-nonce", bytes([0x01 | 0x02]) + cf.encode() + b"\0" + fin.encode())

    # scram_client: flags, mechs length, mechs, server-first NUL server-final (our client sends n= empty)
    mechs_plain = b"SCRAM-SHA-256\0\0"
    mechs_both = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    _, sf, _, sfin = exchange("n,,", "")
    put("scram_client", "plain", bytes([0, len(mechs_plain)]) + mechs_plain + sf.encode() + b"\0" + sfin.encode())
    put("scram_client", "plain-cached", bytes([2, len(mechs_both)]) + mechs_both + sf.encode() + b"\0" + sfin.encode())
    _, sf, _, sfin = exchange("y,,", "")
    put("scram_client", "y", bytes([1, len(mechs_plain)]) + mechs_plain + sf.encode() + b"\0" + sfin.encode())
    _, sf, _, sfin = exchange("p=tls-server-end-point,,", "", CLIENT_CBIND)
    put("scram_client", "plus", bytes([1, len(mechs_both)]) + mechs_both + sf.encode() + b"\0" + sfin.encode())
    put("scram_client", "server-error", bytes([0, len(mechs_plain)]) + mechs_plain + sf.encode() +
        b"\0e=invalid-proof")
    put("scram_client", "postgres-captured", bytes([0, 16]) + s2c[9:9 + 14] + b"\0\0" +
        s2c[0x18 + 9:0x18 + 1 + 0x5c] + b"\0" + s2c[0x75 + 9:0x75 + 1 + 0x36])

    # conf: flag byte 0 (4096-byte error buffer), then the file
    with open(os.path.join(HERE, "..", "..", "examples", "pglane.ini.in"), "rb") as f:
        example = f.read()
    example = (example.replace(b"@LISTEN@", b"127.0.0.1:6432").replace(b"@PG_PASSWORD@", b"pw")
               .replace(b"@PG_HOST@", b"localhost").replace(b"@PG_PORT@", b"5432")
               .replace(b"@CA_FILE@", b"/etc/ssl/certs/ca-certificates.crt").replace(b"@SECRET@", b"0123abcd"))
    put("conf", "example", b"\0" + example)
    put("conf", "spine", b"\0" + b"""; pglane configuration written by t_spine.sh
[pglane]
listen = 127.0.0.1:6432
connect_timeout = 2        ; seconds
login_timeout = 5

[instance main]
url = postgresql://postgres:secret@localhost:5432/postgres?sslmode=require

[instance other]
url = host=127.0.0.1 port=5433 user=postgres password=x sslmode=require

[instance keys]
host = db.example.com
port = 5434
user = admin
password = p
dbname = maint
sslmode = verify-full
ca = system

[app demo]
instance = main
secret = 3f2a
production_branch = main
provision = manual
owner = app_owner
template = template0
max_clients = 50

[app side]
instance = other
secret = beef
""")
    put("conf", "full-pglane", b"\0" + b"""[pglane]
listen = 127.0.0.1:6432, [::1]:6433
public_host = db.example.com
public_port = 5432
connect_timeout = 0.5
login_timeout = 3
shutdown_timeout = 10
max_clients = 100
max_packet_size = 8192
workers = 2
tls_min_version = TLSv1.3
allow_cleartext = no
admin_user = admin
admin_password = x
http_listen = 127.0.0.1:9187
log_format = json
log_level = debug
log_file = pglane.log
""")
    put("conf", "errors", b"\0" + b"""[pglane]
listen = 127.0.0.1
[app Demo--x]
instance = nosuch
[instance a b]
this line is not ini
[app demo]
secret =
""")

    # url: flag byte, then the value of url =
    for i, u in enumerate([
        "postgresql://postgres:secret@localhost:5432/postgres?sslmode=verify-full",
        "postgres://u%40x:p%2Fw@[::1]:6543/db%20name?sslmode=require&sslrootcert=system",
        "host=127.0.0.1 port=5433 user=postgres password='a b\\'c' dbname=postgres sslmode=prefer",
        "postgresql:///postgres?host=/var/run/postgresql&port=5432",
        "postgresql://h1:5432,h2:5433/db",
        "postgresql://db.example.com/app?application_name=x",
    ]):
        put("url", "url-%d" % i, bytes([0]) + u.encode())
    put("url", "url-keys-win", bytes([7]) + b"postgresql://u:p@h:1/d?sslmode=disable")

    # user: flag byte, then user NUL database
    long_branch = b"feature/JIRA-1234-a-really-long-branch-name-that-goes-well-past-the-postgres-identifier-limit"
    for i, (u, d, fl) in enumerate([
        (b"demo-production", b"demo-production", 1),
        (b"demo-preview", b"demo-preview", 0),
        (b"demo--main", b"demo--main", 1),
        (b"demo--feature/Login-Page", b"demo--feature/Login-Page", 0),
        (b"demo--user@example/fix_1.2", b"demo-production", 0),
        (b"demo--" + long_branch, b"demo--" + long_branch, 1),
        (b"my-app-2--caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e" * 3, b"", 0),
        (b"nosuchapp-production", None, 2),
    ]):
        put("user", "user-%d" % i, bytes([fl]) + u + (b"\0" + d if d is not None else b""))


if __name__ == "__main__":
    main()
