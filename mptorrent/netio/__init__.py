"""Network I/O around the sans-IO codecs: tracker transports, peer sockets, our tracker."""
