from attnvgg_export.cli import main

raise SystemExit(main())
