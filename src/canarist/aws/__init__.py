"""What the AWS drivers share: clients and the translation of botocore's errors.

boto3 is imported only here and in the AWS driver modules.
"""
