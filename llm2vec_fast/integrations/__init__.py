"""Bridges to other tools: MTEB, sentence-transformers and Ray Data."""
