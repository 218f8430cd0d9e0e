"""What measures accuracy: `moai-edge eval` on the trained tiny world (per question type, with or without the
experts), and two packages' answers compared question by question (`--against`, McNemar's exact test)."""
