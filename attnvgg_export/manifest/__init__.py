"""manifest.json: what a build made and proved, read by edge runtimes; its JSON Schema
(schema.json); and the sha256 of every artifact."""
