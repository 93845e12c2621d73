"""Where input files are read: survey (size, checksum, encoding, format, chunks), shape detection, chunks
-> raw records, config sources -> keyed rows.
"""
