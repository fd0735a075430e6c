"""Pure HTTP pieces shared by the door and the pool server: conditional requests (`conditionals`), byte
ranges (`ranges`), reading request bodies (`body`) and streaming a file's bytes out (`streaming`). Nothing
here knows the namespace or a pool's layout."""
