# Writes accounts/: statements of two accounts of one shortcode, a Pull
# response, a statement that names no shortcode, and the callbacks for
# them (all fictional). The B2B and account cases of issue 15:
#   /usr/bin/python3 gen_accounts.py
import csv, io, json

HDR = ["Receipt No.","Completion Time","Initiation Time","Details","Transaction Status","Paid In","Withdrawn","Balance",
       "Balance Confirmed","Reason Type","Other Party Info","Linked Transaction ID","A/C No.","Currency"]

def g2(name, account, paid_in, withdrawn, rows):
    pre = [["Account Holder:","Fictional Traders Ltd"],["Short Code:","600638"],["Account:",account],
           ["Time Period:","From 01-12-2026 00:00:00 To 31-12-2026 23:59:59"],
           ["Total Paid In:",paid_in],["Total Withdrawn:",withdrawn],[]]
    buf = io.StringIO(); w = csv.writer(buf, lineterminator="\r\n")
    for r in pre + [HDR] + rows: w.writerow(r)
    open("accounts/" + name, "w", newline="").write(buf.getvalue())

def r(receipt, when, details, paid_in, withdrawn, reason, party, linked="", acc=""):
    return [receipt, when, when, details, "Completed", paid_in, withdrawn, "", "true", reason, party, linked, acc, "KES"]

# Utility: B2B received (one with a C2B confirmation, one without), a B2C
# payout with its charge. No b2b.result belongs here.
g2("ORG_600638_Utility_Account_20261201-20261231.csv", "Utility Account", "5,800.00", "-715.00", [
 r("TKU0000004","04-12-2026 09:00:00","Business Payment Charge","","-15.00","Business Payment Charge",""),
 r("TKU0000004","04-12-2026 09:00:00","Business Payment to 254700000504 - Neema Achieng","","-700.00","Business Payment","254700000504 - Neema Achieng"),
 r("TKU0000003","03-12-2026 11:00:00","Business Pay Bill from 600200 - Fictional Hardware Ltd via API. Acc. INV-12","800.00","","Business Pay Bill","600200 - Fictional Hardware Ltd",acc="INV-12"),
 r("TKU0000002","02-12-2026 10:00:00","Business Pay Bill from 600100 - Fictional Supplies Ltd via API. Acc. INV-9","5000.00","","Business Pay Bill","600100 - Fictional Supplies Ltd",acc="INV-9"),
])
# Working (MMF): B2B payments this shortcode made, each with its charge.
g2("ORG_600638_Working_Account_20261201-20261231.csv", "Working Account", "0.00", "-4,040.00", [
 r("TKW0000002","06-12-2026 15:00:00","Business Pay Bill Charge","","-20.00","Business Pay Bill Charge",""),
 r("TKW0000002","06-12-2026 15:00:00","Business Pay Bill to 888880 - Fictional Power Co Acc. 1234","","-1500.00","Business Pay Bill","888880 - Fictional Power Co",acc="1234"),
 r("TKW0000001","05-12-2026 14:00:00","Business Pay Bill Charge","","-20.00","Business Pay Bill Charge",""),
 r("TKW0000001","05-12-2026 14:00:00","Business Pay Bill to 888880 - Fictional Power Co Acc. 1234","","-2500.00","Business Pay Bill","888880 - Fictional Power Co",acc="1234"),
])
# Pull Transactions for 600639: C2B only.
json.dump({"ResponseCode":"1000","Response":[[{"transactionId":"TKP0000101","trxDate":"2026-12-07T09:00:00+03:00","msisdn":254700000601,
  "transactiontype":"c2b-pay-bill-debit","billreference":"A1","amount":"60.00","organizationname":"Fictional Traders Ltd"}]]},
  open("accounts/pull-600639.json","w"), indent=1)
# A statement that names no shortcode (no preamble, no shortcode in its name).
buf = io.StringIO(); w = csv.writer(buf, lineterminator="\r\n")
w.writerow(["Receipt No","Completion Time","Details","Transaction Status","Paid In (KSHs)","Withdrawn (KSHs)"])
w.writerow(["TKN0000002","10/12/2026 10:00:00","Pay Bill from 254700000702 - Test Two Acc. 2","Completed","20.00",""])
w.writerow(["TKN0000001","01/12/2026 10:00:00","Pay Bill from 254700000701 - Test One Acc. 1","Completed","10.00",""])
open("accounts/export.csv","w", newline="").write(buf.getvalue())

def line(kind, shortcode, tok, tid, body):
    h = {"Nats-Msg-Id": kind + ":" + tid, "Daraja-Kind": kind, "Daraja-Shortcode": shortcode, "Daraja-Transaction-Id": tid,
         "Daraja-Token-Id": tok, "Daraja-Received-At": "2026-12-31T21:00:00Z"}
    return json.dumps({"subject": "daraja.cb.%s.%s.%s" % (kind, shortcode, tok), "headers": h, "body": body}, separators=(",", ":"))

def c2b(tid, when, amount, shortcode, msisdn):
    return {"TransactionType":"Pay Bill","TransID":tid,"TransTime":when,"TransAmount":amount,"BusinessShortCode":shortcode,
            "BillRefNumber":"INV","InvoiceNumber":"","OrgAccountBalance":"","ThirdPartyTransID":"","MSISDN":msisdn,"FirstName":"Test","MiddleName":"","LastName":"Payer"}

def result(conv, receipt, params):
    return {"Result":{"ResultType":0,"ResultCode":0,"ResultDesc":"fictional","OriginatorConversationID":"1-1-1","ConversationID":conv,
            "TransactionID":receipt,"ResultParameters":{"ResultParameter":params}}}

def b2b(conv, receipt, amount, completed):
    return result(conv, receipt, [{"Key":"DebitAccountBalance","Value":"Working Account|KES|46713.00|46713.00|0.00|0.00"},
      {"Key":"Amount","Value":amount},{"Key":"TransCompletedTime","Value":completed},
      {"Key":"ReceiverPartyPublicName","Value":"888880 - Fictional Power Co"},{"Key":"Currency","Value":"KES"}])

out = [
 # The C2B confirmation some paybills get for a B2B payment received.
 line("c2b.confirmation","600638","tok_c2breusable00001","TKU0000003", c2b("TKU0000003","20261203110000","800.00","600638","600200")),
 line("b2c.result","600638","tok_b2c0000000000504","AG_20261204_000000000504",
      result("AG_20261204_000000000504","TKU0000004",[{"Key":"TransactionAmount","Value":700},{"Key":"TransactionReceipt","Value":"TKU0000004"},
       {"Key":"ReceiverPartyPublicName","Value":"254700000504 - Neema Achieng"},{"Key":"TransactionCompletedDateTime","Value":"04.12.2026 09:00:01"}])),
 # B2B results: on the Working account's statement, never on Utility's.
 line("b2b.result","600638","tok_b2b0000000000001","AG_20261205_0000b2b00000001", b2b("AG_20261205_0000b2b00000001","TKW0000001",2500,20261205140003)),
 # Its time is two hours from its line's: read from TransCompletedTime.
 line("b2b.result","600638","tok_b2b0000000000002","AG_20261206_0000b2b00000002", b2b("AG_20261206_0000b2b00000002","TKW0000002",1500,20261206170000)),
 # Pull (C2B only) for 600639: its C2B matches, its B2C is not covered.
 line("c2b.confirmation","600639","tok_c2breusable00639","TKP0000101", c2b("TKP0000101","20261207090000","60.00","600639","254700000601")),
 line("b2c.result","600639","tok_b2c0000000000639","AG_20261208_000000000639",
      result("AG_20261208_000000000639","TKP0000102",[{"Key":"TransactionAmount","Value":90},{"Key":"TransactionReceipt","Value":"TKP0000102"},
       {"Key":"ReceiverPartyPublicName","Value":"254700000602 - Test Payee"},{"Key":"TransactionCompletedDateTime","Value":"08.12.2026 12:00:00"}])),
 # 600777: the statement that names no shortcode does not cover it.
 line("c2b.confirmation","600777","tok_c2breusable00777","TKN0000001", c2b("TKN0000001","20261201100000","10.00","600777","254700000701")),
 line("c2b.confirmation","600777","tok_c2breusable00777","TKN0000002", c2b("TKN0000002","20261210100000","20.00","600777","254700000702")),
 line("c2b.confirmation","600777","tok_c2breusable00777","TKN0000009", c2b("TKN0000009","20261205100000","90.00","600777","254700000709")),
]
open("accounts/callbacks.ndjson", "w").write("\n".join(out) + "\n")
