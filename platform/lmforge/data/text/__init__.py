"""What a record becomes: pretraining text (templates), or a Conversation (SFT formats, dialogue markers)
rendered into input_ids and labels.
"""
