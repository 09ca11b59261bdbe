"""Generated from ``proto/darktower/v1`` by ``scripts/gen_proto.py``; do not edit."""
