from source_perly_stripe.run import run

if __name__ == "__main__":
    run()
