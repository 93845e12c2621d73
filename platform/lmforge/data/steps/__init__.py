"""The steps records pass, each on its own: clean, dedup (MinHash primitives, over a Ray Dataset,
conversation keys), mixture, tokenize, packing (blocks, rows), the seeded hash.
"""
