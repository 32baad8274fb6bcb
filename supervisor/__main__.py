from supervisor.quick import main

main()
