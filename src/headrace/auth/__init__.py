"""Users, API keys, macaroons, and the access checks applied at the door and the frontend."""
