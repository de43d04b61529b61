"""What the phone and the server both speak: the taxonomy, the catalog, segment ids, coarse
geography, the clock and the context policy. Nothing here stores or sends anything."""
