"""The storage service: namespace, pools, checksums, the WebDAV door and the namespace REST API."""
