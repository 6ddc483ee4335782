"""``python -m tools.provision``: puts the channel's records into a Dataverse environment.

Every step reads its record by key, then creates or updates it only where it differs, so a
second run writes nothing and a failed run is resumed by running it again.
"""
