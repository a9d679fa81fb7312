"""RecBole's SASRec plus one learned score offset for the items of a row's own history.

Why a model of its own: the plugin's content models take ``history_bias`` (``layers.HistoryBias``), and on
both downstream domains the ID model ranks the item just bought first as often as they do
(``benchmarks/history_probe.py``: 79 % of Scientific's test rows, 96 % of toys'). Filtering those items after
the fact is not what the content models get, which learn the offset from the training targets; this class
gives SASRec the same term, so that a gain the bias brings is measured against IDs with it too. RecBole's
SASRec itself stays unchanged (``SASRec`` still runs RecBole's class).
"""
from recbole.model.sequential_recommender import SASRec

from recbole_missrec.model.layers import HistoryBias


class HistorySASRec(SASRec):
    """SASRec's full-softmax scores over every item [B, N] plus ``HistoryBias`` on the row's history items.

    Its logits are raw dot products: trained on Scientific, the top one stands 8.6 above the median and the last
    history item 1.8 above the best unseen item (median over the test rows). Adam moves a parameter by about the
    learning rate a step, so in logit units the offset would move 0.07 an epoch there (70 steps) and stop
    early before it can filter; ``HISTORY_SCALE`` 10 lets it cross that margin within a few epochs, as 1 / τ
    (14) does for MISSRec's cosines. Cross-entropy only: the offset of a sampled BPR pair is not the ranking's."""

    HISTORY_SCALE = 10.0

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise ValueError(f"HistorySASRec trains with loss_type: CE (the full ranking its offset shifts); "
                             f"got {self.loss_type!r}")
        self.history_bias = HistoryBias(self.HISTORY_SCALE)

    def calculate_loss(self, interaction):
        return self.loss_fct(self.full_sort_predict(interaction), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        scores = super().predict(interaction)  # [B]
        return self.history_bias.paired(scores, interaction[self.ITEM_SEQ], interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        return self.history_bias(super().full_sort_predict(interaction), interaction[self.ITEM_SEQ])  # [B, N]
