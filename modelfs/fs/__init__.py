"""The filesystem: the daemon, the FUSE boundary, the namespace tree, name resolution, mount control."""
