"""The door role: WebDAV on granian (or uvicorn), over the shared namespace and pools."""

from __future__ import annotations

from headrace.config import Settings
from headrace.roles.common import GranianDoor, QuietServer, uvicorn_config
from headrace.storage.door import Door
from headrace.storage.service import StorageService


class DoorRole:
    def __init__(self, service: StorageService, settings: Settings) -> None:
        self.settings = settings
        self.app = Door(service, settings)
        self.server: QuietServer | GranianDoor
        if settings.door_server == "granian":
            self.server = GranianDoor(self.app, settings)
        else:
            self.server = QuietServer(uvicorn_config(self.app, settings, settings.door_port))

    def announce(self) -> None:
        print(f"headrace: door     {self.settings.door_url}  (WebDAV)", flush=True)

    def request_stop(self) -> None:
        self.server.request_stop()
