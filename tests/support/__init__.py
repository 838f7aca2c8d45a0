"""What the test tiers and benchmarks share: servers, clients, stand-ins and helpers that are not
tests themselves. Test modules import from here, never from each other; conftest.py files hold
fixtures only. Kept free of imports: containers run some of these modules (python3 -m
tests.support.<module>) with only the tests package mounted."""
