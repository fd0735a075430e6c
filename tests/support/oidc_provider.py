"""An OAuth2/OIDC provider on 127.0.0.1 for the JWT tests, built from Authlib's authorization server (its
Flask integration, client-credentials and password grants, and its RFC 9068 JWT access-token generator),
served by werkzeug on a thread of its own.

For the web console's sign-in it is also a provider a browser logs in at: the authorization code grant with
PKCE (S256 required of public clients, as Keycloak's "PKCE method" setting does), a small HTML login form at
its authorization endpoint, and CORS for a public client's web origins on the token, discovery and key
endpoints (the console exchanges the code from the page, as it does with Keycloak).

Why not a ready-made one: oidc-provider-mock (PyPI, the maintained Python mock) issues opaque access tokens
through the authorization-code flow only, with one fixed key (no rotation, no client credentials, no custom
audience); Keycloak 26 wants Java 21 where this machine has 17, and a 200 MB download and ~20 s start per
run. Authlib is the library oidc-provider-mock is built on; the tokens here are what its server issues:
signed with the provider's current RSA key (`kid` in the header), published at `jwks_uri` from the discovery
document, `rotate()` replacing it. Each client has its own audience, scopes it may ask for and token
lifetime (a negative one issues tokens already expired: the provider's own expired tokens).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, Response, jsonify, request
from joserfc.jwk import KeySet, RSAKey
from markupsafe import escape
from werkzeug.serving import make_server


@dataclass
class ProviderClient(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    audience: str | list[str]
    lifetime: int = 300
    extra_claims: dict[str, Any] = field(default_factory=dict)
    #: A public client (no secret: the authorization code grant with PKCE), as a browser application is.
    public: bool = False
    redirect_uris: tuple[str, ...] = ()
    #: Origins whose pages may call the token, discovery and key endpoints (CORS).
    web_origins: tuple[str, ...] = ()

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0] if self.redirect_uris else ""

    def get_allowed_scope(self, scope: str) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return not self.public and secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if self.public else method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return self.public and response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code" if self.public else grant_type in ("client_credentials", "password")


@dataclass
class ProviderUser:
    username: str
    password: str
    claims: dict[str, Any]

    def get_user_id(self) -> str:
        return str(self.claims.get("sub", self.username))


@dataclass
class IssuedCode:
    """An authorization code, bound to its client, redirect URI, user and PKCE challenge; used once."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: ProviderUser
    code_challenge: str | None
    code_challenge_method: str | None
    issued: float = field(default_factory=time.monotonic)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class _AuthorizationCode(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    #: Seconds a code may be exchanged after it is issued.
    LIFETIME = 60

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        self.server.provider.codes[code] = IssuedCode(
            code, request.client.client_id, request.payload.redirect_uri or "", request.scope or "", request.user,
            data.get("code_challenge"), data.get("code_challenge_method"),
        )  # fmt: skip

    def query_authorization_code(self, code: str, client: ProviderClient) -> IssuedCode | None:
        issued = self.server.provider.codes.get(code)
        if issued is None or issued.client_id != client.client_id:
            return None
        return issued if time.monotonic() - issued.issued < self.LIFETIME else None

    def delete_authorization_code(self, authorization_code: IssuedCode) -> None:
        self.server.provider.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: IssuedCode) -> ProviderUser:
        return authorization_code.user


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to the test provider</title></head>
<body><h1>Test provider</h1><p>Sign in to continue to {client}</p>{failed}
<form method="post" id="login-form">
<label>Username <input id="username" name="username" autocomplete="username" autofocus></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
<button id="login" type="submit">Sign in</button>
</form></body></html>
"""


class _PasswordGrant(grants.ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def authenticate_user(self, username: str, password: str) -> ProviderUser | None:
        user = self.server.provider.users.get(username)
        return user if user is not None and secrets.compare_digest(user.password, password) else None


class _ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class OidcProvider:
    def __init__(self) -> None:
        self.clients: dict[str, ProviderClient] = {}
        self.users: dict[str, ProviderUser] = {}
        self.codes: dict[str, IssuedCode] = {}
        #: Each login at the authorization endpoint's form: (username, client_id).
        self.logins: list[tuple[str, str]] = []
        self.keys: list[RSAKey] = []
        self.rotate()
        self.app = Flask("headrace-test-oidc")
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        self._build()
        self._thread = threading.Thread(target=self.server.serve_forever, name="oidc-provider", daemon=True)

    # -- keys, clients, users ------------------------------------------------------------------------------

    def rotate(self, *, keep_old: bool = False) -> str:
        """A new signing key (its kid returned); the old one stays published only with `keep_old`."""
        kid = f"k{len(self.keys) + 1}-{secrets.token_hex(3)}"
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)
        self.keys = [*self.keys, key] if keep_old else [key]
        return kid

    @property
    def signing_key(self) -> RSAKey:
        return self.keys[-1]

    def add_client(self, client_id: str, audience: str | list[str], *, lifetime: int = 300, **claims: Any) -> str:
        secret = secrets.token_urlsafe(16)
        self.clients[client_id] = ProviderClient(client_id, secret, audience, lifetime, dict(claims))
        return secret

    def add_public_client(
        self, client_id: str, audience: str | list[str], redirect_uri: str, *, web_origin: str = "", **claims: Any
    ) -> None:
        """A browser application's client: the authorization code grant with PKCE, no secret, `redirect_uri`
        exactly, CORS for `web_origin` (default: the redirect URI's origin), as a Keycloak public client."""
        if not web_origin:
            parts = httpx.URL(redirect_uri)
            web_origin = f"{parts.scheme}://{parts.netloc.decode()}"
        self.clients[client_id] = ProviderClient(
            client_id, "", audience, extra_claims=dict(claims), public=True, redirect_uris=(redirect_uri,),
            web_origins=(web_origin,),
        )  # fmt: skip

    def add_user(self, username: str, password: str, **claims: Any) -> None:
        self.users[username] = ProviderUser(username, password, {"sub": username, **claims})

    # -- the server --------------------------------------------------------------------------------------

    def _build(self) -> None:
        provider = self

        class TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
            def get_jwks(self) -> dict[str, Any]:
                return KeySet([provider.signing_key]).as_dict(private=True)

            def get_audiences(self, client: ProviderClient, user: Any, scope: str) -> str | list[str]:
                return client.audience

            def get_extra_claims(self, client: ProviderClient, grant_type: str, user: Any, scope: str) -> dict:
                extra = dict(client.extra_claims)
                if user is not None:
                    extra.update({k: v for k, v in user.claims.items() if k != "sub"})
                return extra

        def expires(client: ProviderClient, grant_type: str) -> int:
            return client.lifetime

        server = AuthorizationServer(self.app, query_client=self.clients.get, save_token=lambda token, request: None)
        server.provider = self
        server.register_grant(_ClientCredentials)
        server.register_grant(_PasswordGrant)
        server.register_grant(_AuthorizationCode, [CodeChallenge(required=True)])
        generator = TokenGenerator(self.issuer, expires_generator=expires)
        server.register_token_generator("default", generator)

        @self.app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(
                issuer=self.issuer,
                jwks_uri=f"{self.issuer}/jwks",
                token_endpoint=f"{self.issuer}/token",
                authorization_endpoint=f"{self.issuer}/authorize",
                response_types_supported=["code"],
                code_challenge_methods_supported=["S256"],
                grant_types_supported=["client_credentials", "password", "authorization_code"],
                id_token_signing_alg_values_supported=["RS256"],
            )

        @self.app.get("/jwks")
        def jwks() -> Any:
            return jsonify(KeySet(self.keys).as_dict(private=False))

        @self.app.post("/token")
        def token() -> Any:
            return server.create_token_response()

        @self.app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            """The login form; its POST (the same query) logs the user in and redirects with the code."""
            try:
                grant = server.get_consent_grant(end_user=None)
            except OAuth2Error as error:  # no redirect to an unchecked URI: an error page, as Keycloak shows
                return Response(f"<p id='error'>{escape(error.error)}: {escape(error.description)}</p>", 400)
            client: ProviderClient = grant.request.client
            if client.public and request.values.get("code_challenge_method") != "S256":
                return Response("<p id='error'>invalid_request: PKCE with code_challenge_method S256 required</p>", 400)
            failed = ""
            if request.method == "POST":
                user = self.users.get(request.form.get("username", ""))
                if user is not None and secrets.compare_digest(user.password, request.form.get("password", "")):
                    self.logins.append((user.username, client.client_id))
                    return server.create_authorization_response(grant_user=user, grant=grant)
                failed = "<p id='failed'>Invalid username or password.</p>"
            return Response(LOGIN_PAGE.format(client=escape(client.client_id), failed=failed), mimetype="text/html")

        @self.app.after_request
        def cors(response: Response) -> Response:
            """CORS for the public clients' web origins on what a page calls: token, discovery, keys."""
            origin = request.headers.get("Origin")
            public_path = request.path in ("/token", "/jwks", "/.well-known/openid-configuration")
            if origin and public_path and any(origin in c.web_origins for c in list(self.clients.values())):
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
                response.vary.add("Origin")
            return response

    def start(self) -> OidcProvider:
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the test OIDC provider did not start")

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(5)

    # -- tokens, as a client gets them ---------------------------------------------------------------------

    def token(self, client_id: str, scope: str = "", *, username: str | None = None, password: str = "") -> str:
        """An access token from the token endpoint: client credentials, or the password grant for `username`."""
        client = self.clients[client_id]
        data = {"grant_type": "client_credentials"} if username is None else {
            "grant_type": "password", "username": username, "password": password,
        }  # fmt: skip
        if scope:
            data["scope"] = scope
        r = httpx.post(f"{self.issuer}/token", data=data, auth=(client_id, client.client_secret), timeout=10)
        r.raise_for_status()
        return str(r.json()["access_token"])
