"""File formats: bytes on disk to inert objects, with a budget on every reader.

torch zip and legacy containers, the restricted unpickler and its opcode scanner, safetensors
headers, DCP directories, CRC streaming, object storage. Nothing here knows a checkpoint *layout*
(which names mean what) and nothing here executes code from a file. See docs/architecture.md.
"""
