from attnvgg_runtime.cli import main

raise SystemExit(main())
