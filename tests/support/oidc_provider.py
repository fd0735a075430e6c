"""An OAuth2/OIDC provider on 127.0.0.1 for the JWT tests, built from Authlib's authorization server (its
Flask integration, client-credentials and password grants, and its RFC 9068 JWT access-token generator),
served by werkzeug on a thread of its own.

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
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import make_server


@dataclass
class ProviderClient(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    audience: str | list[str]
    lifetime: int = 300
    extra_claims: dict[str, Any] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("client_credentials", "password")


@dataclass
class ProviderUser:
    username: str
    password: str
    claims: dict[str, Any]

    def get_user_id(self) -> str:
        return str(self.claims.get("sub", self.username))


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
        generator = TokenGenerator(self.issuer, expires_generator=expires)
        server.register_token_generator("default", generator)

        @self.app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(
                issuer=self.issuer,
                jwks_uri=f"{self.issuer}/jwks",
                token_endpoint=f"{self.issuer}/token",
                grant_types_supported=["client_credentials", "password"],
                id_token_signing_alg_values_supported=["RS256"],
            )

        @self.app.get("/jwks")
        def jwks() -> Any:
            return jsonify(KeySet(self.keys).as_dict(private=False))

        @self.app.post("/token")
        def token() -> Any:
            return server.create_token_response()

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
