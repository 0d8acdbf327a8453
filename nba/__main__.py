from nba.cli import main

main()
